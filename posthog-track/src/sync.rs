//! Lock helpers shared by every module that keeps state behind a mutex. A leaf.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, ignoring poisoning: every holder leaves its data consistent at each await
/// and panic point (maps and lists updated in one step), so a panicked holder leaves nothing
/// half-written.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
