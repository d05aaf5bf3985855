//! parse (`attr`, `ast`, over the leaf `name`) -> check (`check`, and `migrations` against the SQL files): the
//! model as the derive understands it. Nothing here knows how code is generated: `expand`
//! reads these types, never the other way round.

pub mod ast;
pub mod attr;
pub mod case;
pub mod check;
pub mod ctxt;
pub mod dialect;
pub mod migrations;
pub mod name;
