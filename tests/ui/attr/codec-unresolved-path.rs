use cache_manager::Cache;

#[derive(Cache)]
#[cache(namespace = "user", key = i64, value = String, codec = codecs::MsgPack)]
pub struct UserCache;

fn main() {}
