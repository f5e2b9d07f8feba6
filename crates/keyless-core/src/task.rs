//! Background tasks tied to the lifetime of their owner.

use tokio::task::JoinHandle;

/// Aborts the task when dropped, so a watcher or refresher never outlives what it serves.
#[derive(Debug)]
pub struct AbortOnDrop(JoinHandle<()>);

impl AbortOnDrop {
    pub fn new(handle: JoinHandle<()>) -> Self {
        Self(handle)
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
