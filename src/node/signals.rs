//! Signals: SIGINT, SIGTERM and SIGHUP set a flag the event loop checks
//! each iteration; the node then answers what waits and stops.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

static STOP_SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP_SIGNALLED.store(true, Ordering::SeqCst);
}

/// Installs SIGINT/SIGTERM/SIGHUP handlers and returns a flag that turns true when
/// one arrives.
pub fn stop_on_signals() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        // SIGHUP too (a closed terminal, a killed tmux pane), unless the
        // node was started with it ignored (nohup).
        let previous = libc::signal(libc::SIGHUP, on_signal as *const () as libc::sighandler_t);
        if previous == libc::SIG_IGN {
            libc::signal(libc::SIGHUP, libc::SIG_IGN);
        }
    }
    let f = flag.clone();
    std::thread::spawn(move || loop {
        if STOP_SIGNALLED.load(Ordering::SeqCst) {
            f.store(true, Ordering::SeqCst);
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    });
    flag
}
