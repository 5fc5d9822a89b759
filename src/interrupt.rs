//! Ctrl-C (SIGINT) and SIGTERM while output is being written.
//!
//! The default action of these signals ends the process at once, without running destructors,
//! so a temporary output file being written would stay behind. The handler installed by
//! [`install`] keeps the default behaviour whenever no output is being written (an
//! interrupted search stops immediately); while a [`Writing`] guard is alive it only records the
//! signal. Writers poll [`check`] between chunks and unwind with an error, which deletes their
//! temporaries; when the last guard is dropped, the recorded signal is raised again with its
//! default action, so the process still ends "killed by SIGINT" as shells and pipelines expect
//! (exit status 130, 143 for SIGTERM). A pipeline folder being built (`crate::diffusers`) is
//! such an output for the whole run, searches included, so the calibration engine and the
//! fidelity check poll [`check`] too, once per chunk of prompts.
//!
//! SIGKILL cannot be caught: a temporary file may survive it. Writers name their temporaries
//! recognisably and remove stale ones on the next run (see `model_io`), and the destination is
//! only ever replaced by an atomic rename, so it is never partial either way.

use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

use anyhow::{bail, Result};

/// Number of live [`Writing`] guards.
static WRITERS: AtomicUsize = AtomicUsize::new(0);
/// The signal received while writing (0: none).
static PENDING: AtomicI32 = AtomicI32::new(0);

const SIGNALS: [libc::c_int; 2] = [libc::SIGINT, libc::SIGTERM];

/// Installs the handler for SIGINT and SIGTERM. Called once by the binary; the library works
/// without it (signals then keep their default action).
pub fn install() {
    for sig in SIGNALS {
        // SAFETY: `on_signal` only touches atomics and calls async-signal-safe functions
        // (signal, raise); the sigaction struct is fully initialised.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

extern "C" fn on_signal(sig: libc::c_int) {
    if WRITERS.load(Ordering::SeqCst) == 0 {
        die_by(sig);
    }
    PENDING.store(sig, Ordering::SeqCst);
}

/// Ends the process by `sig` with its default action.
fn die_by(sig: libc::c_int) {
    // SAFETY: both are async-signal-safe and take plain integers.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

/// Held while a temporary output exists. Create it *before* the temporary file, and drop it
/// *after* the file has been renamed into place or deleted.
pub struct Writing(());

impl Writing {
    pub fn begin() -> Self {
        WRITERS.fetch_add(1, Ordering::SeqCst);
        Writing(())
    }
}

impl Drop for Writing {
    fn drop(&mut self) {
        if WRITERS.fetch_sub(1, Ordering::SeqCst) == 1 {
            let sig = PENDING.swap(0, Ordering::SeqCst);
            if sig != 0 {
                eprintln!("error: interrupted (signal {sig}); no partial output was left");
                die_by(sig);
            }
        }
    }
}

/// Fails if a signal arrived since writing began, so the writer unwinds and deletes its
/// temporaries.
pub fn check() -> Result<()> {
    let sig = PENDING.load(Ordering::SeqCst);
    if sig != 0 {
        bail!("interrupted by signal {sig}");
    }
    Ok(())
}
