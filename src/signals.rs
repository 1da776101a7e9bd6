//! Ctrl-C and SIGTERM in the binary: remove the temporary file being written (so no hidden
//! `.sdgen-tmp-*.part` stays behind) and the previews of images not finished
//! (`NAME.preview.png`), then die of the signal as before.
//!
//! The library installs nothing; it only keeps the list of in-flight temporary files once
//! asked to ([`sdgen::output::atomic::track_in_flight_temps`]).

/// Blocks SIGINT and SIGTERM in this thread and every thread started after it, and waits for
/// them on a thread of its own, where removing files is safe (a signal handler could not take
/// the list's lock). Call it first thing in `main`, before any other thread exists. Signals the
/// process was started with ignored (`nohup`, `cmd &` in a script) stay ignored.
pub fn remove_temps_on_signal() {
    #[cfg(unix)]
    // SAFETY: plain libc calls on a zeroed, then initialised, signal set and a sigaction that
    // is only read into; no handler is installed.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        let mut any = false;
        for sig in [libc::SIGINT, libc::SIGTERM] {
            let mut old: libc::sigaction = std::mem::zeroed();
            let ignored = libc::sigaction(sig, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN;
            if !ignored {
                libc::sigaddset(&mut set, sig);
                any = true;
            }
        }
        if !any || libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return;
        }
        let waiter = std::thread::Builder::new().name("sdgen-signals".into()).spawn(move || {
            let mut sig: libc::c_int = 0;
            // sigwait fails only for an invalid set, which this is not.
            if libc::sigwait(&set, &mut sig) != 0 {
                return;
            }
            sdgen::output::atomic::remove_in_flight_temps();
            // Die of the signal itself, so the parent sees what happened (exit status 130
            // for Ctrl-C in a shell).
            libc::signal(sig, libc::SIG_DFL);
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::raise(sig);
            libc::_exit(128 + sig);
        });
        match waiter {
            Ok(_) => sdgen::output::atomic::track_in_flight_temps(),
            // Without the waiting thread the signals must not stay blocked.
            Err(_) => {
                libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            }
        }
    }
}
