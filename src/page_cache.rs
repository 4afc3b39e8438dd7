//! Dropping the page cache of bytes written in bulk that nothing reads back soon.
//!
//! On the virtual machines this project is measured on, a page the kernel takes that the host has not
//! backed lately (a free page it was told about: free page reporting) costs about 6 ms of CPU per MiB on
//! first touch, paid by whichever thread touches it. A file written through an ever-growing page cache
//! takes such a page for every 4 KiB it writes; with the synced bytes dropped as it goes, the next write
//! reuses the pages just freed: 256 MiB written in 2 MiB synced pieces cost 0.13 s of system time against
//! 1.67 s (bench/README.md, "Stop 41"). On any machine, a bulk write kept in the page cache evicts pages
//! that the node does read.
//!
//! Used for a received snapshot's file and a Raft log rewrite's live state (`raft::log`), and for what a
//! partition's installation appends to the store's file (`Store::install_partition`): all written on
//! background threads. Never on the Raft log's rounds: a page still in another CPU's LRU cache makes the
//! kernel drain every CPU's and wait for it, and with the rounds' records dropped after each sync the
//! failover test's elections, whose votes wait for those syncs, took over 2 s in 2 runs of 8 (none of 8
//! without; bench/README.md, "Stop 41").

use std::fs::File;

/// Drops the page cache of `file`'s bytes `from..to`, which must be synced (the kernel keeps dirty pages
/// and drops only whole pages inside the range). Only a hint: a failure changes nothing but the cost.
pub(crate) fn release(file: &File, from: u64, to: u64) {
    #[cfg(target_os = "linux")]
    if let Some(len) = std::num::NonZeroU64::new(to.saturating_sub(from)) {
        let _ = rustix::fs::fadvise(file, from, Some(len), rustix::fs::Advice::DontNeed);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, from, to);
}
