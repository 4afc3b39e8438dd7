//! A partition's move at a lower CPU priority than the load it moves under.
//!
//! A move's work is CPU work on every node it touches: the leader's snapshot maker reads the partition's
//! keys and encodes them, its sender cuts them into pieces for the peer link, and the new replica's
//! receiving thread keeps them in a file and its installer writes them into its store. On a cluster that is
//! busy serving (the bench machine runs four nodes and the load on two cores, which 2,000 replicated
//! messages a second keep about 85% busy), that work took its fair share of the cores, and every message
//! waited behind it: the move's p99 was 3.6 to 5x the load's before it (bench/README.md, "Stop 36").
//!
//! Those four threads run at `cluster.move_nice`. Above 0 the scheduler gives them only what the load
//! leaves: a move takes longer on a busy node and as long as before on an idle one. The installer writes
//! key by key, without sled's process-wide batch lock, but its flushes (one per 2 MiB, see
//! `Store::install_partition`) hold that lock for reading, and the apply thread's batches wait for them:
//! an installer preempted in a flush holds those batches up too.
//!
//! The default is 0, the same priority as every other thread. At 19, the p99 during a 1 GiB move was
//! lower in stop 37's sitting, with spreads that overlap; and on a saturated CPU the move crawls: a nice-19
//! thread gets about 1/70 of what each busy normal thread gets, so a debug build's empty snapshots took
//! seconds each, and two membership tests did not settle in 90 s on CI (bench/README.md, "Stop 38"). A
//! cluster out of CPU is the one a node is added to, so the move must not wait for idle time.
//!
//! On Linux a nice value belongs to a thread, so each of them lowers its own as it starts.

/// Lowers the calling thread's CPU priority to `nice` (0: left as it is). Raising a nice value needs no
/// privilege; should it fail anyway, the thread runs at the normal priority and says so.
pub(super) fn lower_priority(nice: u8) {
    if nice == 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    if let Err(e) =
        rustix::process::setpriority_process(Some(rustix::thread::gettid()), i32::from(nice))
    {
        tracing::warn!(error = %e, nice, "cannot lower a move thread's CPU priority");
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_thread_lowers_its_own_priority_and_no_other() {
        let before = rustix::process::getpriority_process(None).expect("priority");
        let lowered = std::thread::spawn(|| {
            lower_priority(19);
            rustix::process::getpriority_process(Some(rustix::thread::gettid())).expect("priority")
        })
        .join()
        .expect("thread");
        assert_eq!(lowered, 19);
        let untouched = std::thread::spawn(|| {
            lower_priority(0);
            rustix::process::getpriority_process(Some(rustix::thread::gettid())).expect("priority")
        })
        .join()
        .expect("thread");
        assert_eq!(untouched, before);
        assert_eq!(
            rustix::process::getpriority_process(None).expect("priority"),
            before
        );
    }
}
