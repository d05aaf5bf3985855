//! parse (`attr`, `ast`) -> check (`check`, and `migrations` against the SQL files): the
//! model as the derive understands it.

pub mod ast;
pub mod attr;
pub mod case;
pub mod check;
pub mod ctxt;
pub mod migrations;
