//! An HTTP server on its own thread and runtime, stopped gracefully when dropped (the admin
//! endpoint, the demo's Config Mapper).

use std::future::Future;
use std::pin::Pin;

pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

pub struct Background {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Background {
    /// Runs `serve(shutdown)` to completion on `rt` in a thread named `name`; `shutdown`
    /// resolves when the returned value is dropped.
    pub fn spawn<F, Fut>(name: &str, rt: tokio::runtime::Runtime, serve: F) -> std::io::Result<Self>
    where
        F: FnOnce(Shutdown) -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shutdown: Shutdown = Box::pin(async {
            let _ = stopped.await;
        });
        let thread = std::thread::Builder::new().name(name.into()).spawn(move || rt.block_on(serve(shutdown)))?;
        Ok(Self { stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
