//! Schema mode with fields and properties named by words edition 2024 reserves (`gen`) or that
//! are keywords of a later edition only (`try`, `dyn`): the schema check names each schema field
//! as a raw identifier, which syn alone cannot tell is reserved.

use posthog_track::{EventSchema, TrackedModel};

#[derive(EventSchema)]
pub struct GenProperties {
    pub id: i64,
    pub r#gen: i32,
    pub r#type: String,
    pub r#try: bool,
    pub r#dyn: String,
}

#[derive(Debug, Clone, TrackedModel)]
#[tracked(table = "gens", schema = GenProperties)]
pub struct Gen {
    #[tracked(key)]
    pub id: i64,
    pub r#gen: i32,
    pub r#type: String,
    #[tracked(property = "try")]
    pub attempted: bool,
    #[tracked(property = "dyn", column = "dynamic")]
    pub dynamic: String,
}

fn main() {
    assert_eq!(GenProperties::PROPERTIES, ["id", "gen", "type", "try", "dyn"]);
}
