//! parse (`attr`, `ast`) -> check: the model as the derive understands it.

pub mod ast;
pub mod attr;
pub mod case;
pub mod check;
pub mod ctxt;
