use cache_manager::Cache;

pub struct MsgPack;

#[derive(Cache)]
#[cache(namespace = "user:score", key = i64, value = i64, codec = MsgPack)]
pub struct UserScoreCache;

fn main() {}
