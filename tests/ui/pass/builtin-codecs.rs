// Every built-in codec, the default one, and `version = N`.

use cache_manager::{Cache, cache_registry};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub x: i32,
    pub y: i32,
}

#[derive(Cache)]
#[cache(namespace = "point:default", key = u64, value = Point)]
pub struct DefaultCodecCache;

#[derive(Cache)]
#[cache(namespace = "point:bincode", key = u64, value = Point, codec = "bincode")]
pub struct BincodeCache;

#[derive(Cache)]
#[cache(namespace = "point:json", key = u64, value = Point, codec = "json")]
pub struct JsonCache;

#[derive(Cache)]
#[cache(namespace = "uuid:string", key = String, value = Uuid, codec = "string")]
pub struct StringCache;

#[derive(Cache)]
#[cache(namespace = "count:string", key = Uuid, value = i64, codec = "string", version = 3)]
pub struct CountCache;

/// A form B enum with every option given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Cache)]
#[cache(version = 7, codec = "json", key = i64, ttl = 5, namespace = "shape.v2_x-y")]
pub enum Shape {
    Circle { radius: u32 },
    Square(u32),
    Empty,
}

/// A form B tuple struct, bincode with a version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Cache)]
#[cache(namespace = "meters", key = char, version = 0)]
pub struct Meters(pub f64);

cache_registry! {
    pub struct CacheManager {
        default: DefaultCodecCache,
        bincode: BincodeCache,
        json: JsonCache,
        string: StringCache,
        count: CountCache,
        shapes: ShapeCache,
        meters: MetersCache,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), cache_manager::CacheError> {
    let manager = CacheManager::new();
    manager.connect("memory://").await?;

    let codecs: Vec<_> = manager
        .caches()
        .iter()
        .map(|c| (c.field, c.codec, c.version))
        .collect();
    assert_eq!(
        codecs,
        [
            ("default", "bincode", 0),
            ("bincode", "bincode", 0),
            ("json", "json", 0),
            ("string", "string", 0),
            ("count", "string", 3),
            ("shapes", "json", 7),
            ("meters", "bincode", 0),
        ]
    );

    let p = Point { x: 1, y: -2 };
    assert!(manager.default().set(&1, &p).await?);
    assert_eq!(manager.default().get(&1).await, Some(p.clone()));
    assert!(manager.bincode().set(&1, &p).await?);
    assert_eq!(manager.bincode().get(&1).await, Some(p.clone()));
    assert!(manager.json().set(&1, &p).await?);
    assert_eq!(manager.json().get(&1).await, Some(p));

    let id = Uuid::new_v4();
    assert!(manager.string().set(&"t".to_owned(), &id).await?);
    assert_eq!(manager.string().get(&"t".to_owned()).await, Some(id));
    assert!(manager.count().set(&id, &-5).await?);
    assert_eq!(manager.count().get(&id).await, Some(-5));

    let shape = Shape::Circle { radius: 3 };
    assert!(manager.shapes().set(&1, &shape).await?);
    assert_eq!(manager.shapes().get(&1).await, Some(shape));
    assert_eq!(manager.shapes().ttl(), std::time::Duration::from_secs(5));
    assert!(manager.meters().set(&'m', &Meters(1.5)).await?);
    assert_eq!(manager.meters().get(&'m').await, Some(Meters(1.5)));
    Ok(())
}
