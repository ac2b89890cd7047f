//! cutover's own memory. It runs in every container, so its idle footprint
//! adds to every app's; the target is an idle RSS of at most 5 MB.
//!
//! Nearly all of that is the executable's code, not heap: the kernel maps
//! code by whole page-cache folios and fault-around windows (64 KiB and up),
//! so every function a start runs keeps its neighbours mapped too. Most of
//! what a start runs (argument parsing, TOML, config validation, logging
//! setup) never runs again, so once the supervisor is about to take over,
//! those mappings are dropped and only the code that runs from then on is
//! faulted back in, from the page cache, without I/O.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use tracing::debug;

/// Drops the page mappings of cutover's own code (see the module note).
/// Best effort: on any error the mappings simply stay.
pub fn drop_startup_code() {
    match drop_code_mappings() {
        Ok(bytes) => debug!(kib = bytes / 1024, "dropped start-up code mappings"),
        Err(e) => debug!(error = %e, "start-up code mappings kept"),
    }
}

fn drop_code_mappings() -> io::Result<usize> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let pagemap = File::open("/proc/self/pagemap")?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let page = usize::try_from(page).map_err(|_| io::Error::other("no page size"))?;
    let mut dropped = 0;
    for (start, end) in code_mappings(&maps, &exe) {
        for (lo, hi) in unwritten_runs(&pagemap, start, end, page)? {
            // SAFETY: [lo, hi) lies in a private, read-only, executable
            // mapping of cutover's own binary (from /proc/self/maps) and
            // holds none of its written-to pages (a breakpoint or uprobe
            // makes an anonymous copy of a page; `unwritten_runs` leaves
            // those out). Every other page there is the file's content, so
            // MADV_DONTNEED only unmaps it and the next access maps the same
            // bytes again from the page cache. The executable stays mapped
            // for the life of the process.
            let rc =
                unsafe { libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_DONTNEED) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            dropped += hi - lo;
        }
    }
    Ok(dropped)
}

/// The executable mappings of `exe` in a /proc/PID/maps text.
fn code_mappings(maps: &str, exe: &Path) -> Vec<(usize, usize)> {
    let exe = exe.as_os_str().to_string_lossy();
    maps.lines()
        .filter_map(|line| {
            // "lo-hi perms offset dev inode    path"; the path may hold spaces.
            let mut fields = line.splitn(6, ' ');
            let range = fields.next()?;
            let perms = fields.next()?;
            let path = fields.nth(3)?.trim_start();
            if perms != "r-xp" || path != exe {
                return None;
            }
            let (lo, hi) = range.split_once('-')?;
            let lo = usize::from_str_radix(lo, 16).ok()?;
            let hi = usize::from_str_radix(hi, 16).ok()?;
            (lo < hi).then_some((lo, hi))
        })
        .collect()
}

/// [start, end) without its present anonymous pages, per /proc/self/pagemap
/// (bit 63: present; bit 61: file page).
fn unwritten_runs(
    pagemap: &File,
    start: usize,
    end: usize,
    page: usize,
) -> io::Result<Vec<(usize, usize)>> {
    let pages = (end - start) / page;
    let mut entries = vec![0u8; pages * 8];
    pagemap.read_exact_at(&mut entries, (start / page * 8) as u64)?;
    let written = entries.chunks_exact(8).map(|e| {
        let e = u64::from_ne_bytes(e.try_into().expect("chunks of 8"));
        e >> 63 & 1 == 1 && e >> 61 & 1 == 0
    });
    Ok(runs(written, start, page))
}

/// The address ranges of the pages for which `written` is false.
fn runs(written: impl Iterator<Item = bool>, start: usize, page: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut open: Option<usize> = None;
    let mut at = start;
    for w in written {
        match (w, open) {
            (false, None) => open = Some(at),
            (true, Some(lo)) => {
                out.push((lo, at));
                open = None;
            }
            _ => {}
        }
        at += page;
    }
    if let Some(lo) = open {
        out.push((lo, at));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_executable_mappings_of_the_binary() {
        let maps = "\
55d0a0000000-55d0a0100000 r--p 00000000 fe:00 42     /usr/bin/cut over
55d0a0100000-55d0a0500000 r-xp 00100000 fe:00 42     /usr/bin/cut over
55d0a0500000-55d0a0510000 r--p 00500000 fe:00 42     /usr/bin/cut over
55d0a0510000-55d0a0520000 rw-p 00510000 fe:00 42     /usr/bin/cut over
7f0000000000-7f0000100000 r-xp 00028000 fe:00 7      /usr/lib/x86_64-linux-gnu/libc.so.6
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0      [stack]
";
        let mappings = code_mappings(maps, Path::new("/usr/bin/cut over"));
        assert_eq!(mappings, [(0x55d0a0100000, 0x55d0a0500000)]);
    }

    #[test]
    fn written_pages_are_left_out() {
        let w = |bits: &[u8]| runs(bits.iter().map(|&b| b == 1), 0, 10);
        assert_eq!(w(&[0, 0, 0]), [(0, 30)]);
        assert_eq!(w(&[0, 1, 0, 0, 1]), [(0, 10), (20, 40)]);
        assert_eq!(w(&[1, 1]), []);
    }

    #[test]
    fn dropping_own_code_keeps_running() {
        // The test binary's own code is unmapped and faults back in.
        assert!(drop_code_mappings().unwrap() > 0);
        assert_eq!(code_mappings("", Path::new("/x")), []);
    }
}
