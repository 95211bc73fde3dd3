//! Stopping long work early: a prefill asks before each layer of each chunk of its prompt whether
//! to go on, so that a client that went away, a request past its deadline or a server shutting
//! down frees the model within one layer's time over one chunk instead of after the whole prompt.

use std::fmt;

/// What long work asks, between its steps, whether to stop.
#[derive(Clone, Copy)]
pub struct Interrupt<'a> {
    requested: &'a (dyn Fn() -> bool + Sync + 'a),
}

fn never() -> bool {
    false
}

impl<'a> Interrupt<'a> {
    /// Work that is never stopped early.
    pub const NEVER: Interrupt<'static> = Interrupt { requested: &never };

    /// Stops work once `requested` answers true (it is called between steps, so it must be cheap).
    pub fn new(requested: &'a (dyn Fn() -> bool + Sync + 'a)) -> Self {
        Self { requested }
    }

    /// `Err(Interrupted)` once a stop has been requested.
    pub fn check(&self) -> Result<(), Interrupted> {
        if (self.requested)() {
            Err(Interrupted)
        } else {
            Ok(())
        }
    }
}

impl fmt::Debug for Interrupt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Interrupt").finish_non_exhaustive()
    }
}

/// Work stopped because its [`Interrupt`] asked it to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the work was interrupted before it finished")]
pub struct Interrupted;

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[test]
    fn answers_what_its_check_says() {
        assert_eq!(Interrupt::NEVER.check(), Ok(()));
        let stop = AtomicBool::new(false);
        let check = || stop.load(Ordering::Relaxed);
        let interrupt = Interrupt::new(&check);
        assert_eq!(interrupt.check(), Ok(()));
        stop.store(true, Ordering::Relaxed);
        assert_eq!(interrupt.check(), Err(Interrupted));
    }
}
