//! Nothing lost, nothing twice: the real `syncpay serve` binary, run as a
//! child process on a temporary store, is killed with SIGKILL at random
//! moments while concurrent shops and simulated handsets keep it busy, then
//! restarted and checked against every acknowledgement the clients got.
//! The load, the record of acknowledgements and every check are the shared
//! crash harness (`tests/common/crash_rig.rs`, which documents them); this
//! test's crash is a plain `kill -9`, which keeps the operating system's
//! page cache (`tests/power_loss.rs` takes that too).
//!
//! The run prints its seed. Replay, or soak:
//!
//! ```text
//! SYNCPAY_CRASH_SEED=1234 cargo test --test crash -- --nocapture
//! SYNCPAY_CRASH_CYCLES=50 cargo test --test crash -- --nocapture
//! ```

#[path = "common/backends.rs"]
#[allow(dead_code)]
mod backends;
#[path = "common/crash_rig.rs"]
mod crash_rig;
#[path = "common/pg.rs"]
#[allow(dead_code)]
mod pg;

use crash_rig::{Crash, Launch, ServerProcess, Spec};

/// Kill cycles of the default run; `SYNCPAY_CRASH_CYCLES` overrides.
const DEFAULT_CYCLES: u32 = 4;

/// kill -9, and nothing else.
struct Kill9;

impl Crash for Kill9 {
    async fn crash(&mut self, server: ServerProcess) {
        server.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_and_nothing_happens_twice_across_kill_9() {
    for backend in backends::backends() {
        eprintln!("crash test on the {} backend", backend.name);
        let dir = tempfile::tempdir().expect("tempdir");
        let launch = Launch { data_dir: dir.path().to_owned(), args: (backend.serve_args)(dir.path()) };
        let spec = Spec::from_env("crash test", "SYNCPAY_CRASH_SEED", "SYNCPAY_CRASH_CYCLES", DEFAULT_CYCLES, launch);
        crash_rig::run(spec, &mut Kill9).await;
    }
}
