//! The few `bpf(2)` commands aya 0.14 does not wrap: batched map updates and deletes, and
//! `BPF_PROG_TEST_RUN` / `BPF_PROG_GET_FD_BY_ID` on programs aya did not load (the benchmark
//! runs Debian's xdp-filter through the same path as ours).
//!
//! Layouts follow `union bpf_attr` in include/uapi/linux/bpf.h.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// Largest batch handed to the kernel at once (bounds the kernel's temporary allocation).
const BATCH: usize = 64 * 1024;

#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Default)]
struct GetFdAttr {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

pub(super) fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, initialised bpf_attr prefix of the size we pass.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as u32,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// What a batched command does, for [`in_batches`]: a lookup ends with `ENOENT` after the
/// last element; for a write, `ENOENT` is an error (a delete of what is not there).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Walk {
    Write,
    Lookup,
}

/// Drives a batched map command over `total` elements in steps of at most [`BATCH`].
/// `step(done, n)` makes one call for elements `done..done + n` and returns its result and
/// the count the kernel reported, which it sets even when it stops early. Transient
/// `EINTR`/`EAGAIN` resume where the kernel stopped; `ENOENT` ends a lookup (`lookup`: the
/// last batch) and is an error otherwise ([`Walk`]). Returns how many elements were processed.
fn in_batches(
    total: usize,
    walk: Walk,
    mut step: impl FnMut(usize, usize) -> (io::Result<libc::c_long>, usize),
) -> io::Result<usize> {
    let mut done = 0usize;
    let mut stalls = 0;
    while done < total {
        let n = (total - done).min(BATCH);
        let (res, count) = step(done, n);
        let progressed = count.min(n);
        done += progressed;
        let e = match res {
            Ok(_) if progressed > 0 => continue,
            // A call that succeeds without progress would loop for ever.
            Ok(_) => io::Error::other(format!("the kernel processed 0 of {n} elements")),
            Err(e) => e,
        };
        match e.raw_os_error() {
            Some(libc::ENOENT) if walk == Walk::Lookup => break,
            Some(libc::EINTR | libc::EAGAIN) => {
                stalls = if progressed == 0 { stalls + 1 } else { 0 };
                if stalls > 100 {
                    return Err(e);
                }
            }
            _ => return Err(e),
        }
    }
    Ok(done)
}

/// Runs a batched update or delete over `keys` (and `values`, for updates).
fn batch<K: Copy, V: Copy>(
    cmd: libc::c_long,
    map: BorrowedFd<'_>,
    keys: &[K],
    values: Option<&[V]>,
) -> io::Result<()> {
    in_batches(keys.len(), Walk::Write, |done, n| {
        let mut attr = BatchAttr {
            keys: keys[done..].as_ptr() as u64,
            values: values.map_or(0, |v| v[done..].as_ptr() as u64),
            count: n as u32,
            map_fd: map.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        let res = bpf(cmd, &mut attr);
        (res, attr.count as usize)
    })
    .map(drop)
}

/// Writes `keys[i] -> values[i]` for all `i` (`BPF_MAP_UPDATE_BATCH`). `K` and `V` must be the
/// map's exact key and value layouts. On error, a prefix may have been written.
pub fn update_batch<K: Copy, V: Copy>(
    map: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> io::Result<()> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    batch(BPF_MAP_UPDATE_BATCH, map, keys, Some(values))
}

/// [`update_batch`] split over the available CPUs: hash maps lock per bucket, so large
/// loads scale with cores.
pub fn update_batch_parallel<K: Copy + Sync, V: Copy + Sync>(
    map: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> io::Result<()> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    if keys.len() < 2 * BATCH || threads < 2 {
        return update_batch(map, keys, values);
    }
    let chunk = keys.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = keys
            .chunks(chunk)
            .zip(values.chunks(chunk))
            .map(|(k, v)| scope.spawn(move || update_batch(map, k, v)))
            .collect();
        workers.into_iter().try_for_each(|w| {
            w.join()
                .unwrap_or_else(|_| Err(io::Error::other("writer thread panicked")))
        })
    })
}

/// Deletes `keys` (`BPF_MAP_DELETE_BATCH`); keys that are absent are an error (`ENOENT`),
/// which callers avoid by deleting only what their twin says exists.
pub fn delete_batch<K: Copy>(map: BorrowedFd<'_>, keys: &[K]) -> io::Result<()> {
    batch::<K, u8>(BPF_MAP_DELETE_BATCH, map, keys, None)
}

/// Reads every element of an array map of `len` entries (`BPF_MAP_LOOKUP_BATCH`), in index
/// order: one call per [`BATCH`] elements instead of one per element.
pub fn lookup_array<V: Copy + Default>(map: BorrowedFd<'_>, len: u32) -> io::Result<Vec<V>> {
    let mut values = vec![V::default(); len as usize];
    let mut keys = vec![0u32; len as usize];
    let mut cursor = 0u32;
    let done = in_batches(values.len(), Walk::Lookup, |done, n| {
        let mut attr = BatchAttr {
            in_batch: if done == 0 {
                0
            } else {
                &raw const cursor as u64
            },
            out_batch: &raw mut cursor as u64,
            keys: keys[done..].as_mut_ptr() as u64,
            values: values[done..].as_mut_ptr() as u64,
            count: n as u32,
            map_fd: map.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        let res = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        (res, attr.count as usize)
    })?;
    if done != values.len() || keys.iter().enumerate().any(|(i, k)| *k as usize != i) {
        return Err(io::Error::other(format!(
            "array lookup returned {done} of {len} elements out of order"
        )));
    }
    Ok(values)
}

/// Walks every element of a per-CPU hash map (`BPF_MAP_LOOKUP_BATCH`, [`HASH_CHUNK`] keys
/// per call into buffers reused throughout, so a host with many CPUs does not allocate the
/// whole map's values at once), handing `each` a key and its `cpus` values in CPU order.
/// `V`'s size must be a multiple of 8 (per-CPU values are 8-byte aligned). Elements added or
/// evicted meanwhile may be missed or seen; returns how many were seen.
pub fn for_each_percpu<K: Copy + Default, V: Copy + Default>(
    map: BorrowedFd<'_>,
    cpus: usize,
    mut each: impl FnMut(K, &[V]),
) -> io::Result<usize> {
    assert!(
        std::mem::size_of::<V>().is_multiple_of(8),
        "per-CPU values are 8-byte aligned"
    );
    let mut keys = vec![K::default(); HASH_CHUNK];
    let mut values = vec![V::default(); HASH_CHUNK * cpus];
    let mut cursor = 0u32;
    // As many elements as the map yields: `in_batches` stops at ENOENT.
    in_batches(usize::MAX, Walk::Lookup, |done, n| {
        let mut attr = BatchAttr {
            in_batch: if done == 0 {
                0
            } else {
                &raw const cursor as u64
            },
            out_batch: &raw mut cursor as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: n.min(HASH_CHUNK) as u32,
            map_fd: map.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        let res = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        // The count is the kernel's only after success or the end of the map.
        let counted = match &res {
            Ok(_) => true,
            Err(e) => e.raw_os_error() == Some(libc::ENOENT),
        };
        let got = if counted {
            (attr.count as usize).min(HASH_CHUNK)
        } else {
            0
        };
        for (k, v) in keys[..got].iter().zip(values.chunks(cpus)) {
            each(*k, v);
        }
        (res, got)
    })
}

/// Keys per `BPF_MAP_LOOKUP_BATCH` call of [`for_each_percpu`].
const HASH_CHUNK: usize = 1024;

/// Result of one `BPF_PROG_TEST_RUN`.
#[derive(Clone, Copy, Debug)]
pub struct TestRun {
    /// The program's return value (an XDP action).
    pub retval: u32,
    /// Mean time per repetition, as the kernel measured it.
    pub per_run: Duration,
}

/// Runs an XDP program on `frame` `repeat` times in the kernel (`BPF_PROG_TEST_RUN`).
pub fn test_run(prog: BorrowedFd<'_>, frame: &[u8], repeat: u32) -> io::Result<TestRun> {
    let mut out = vec![0u8; frame.len() + 512];
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat,
        ..TestRunAttr::default()
    };
    bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    Ok(TestRun {
        retval: attr.retval,
        per_run: Duration::from_nanos(u64::from(attr.duration)),
    })
}

/// Opens a loaded program by its kernel id (for programs another tool loaded).
pub fn prog_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    let mut attr = GetFdAttr {
        id,
        ..GetFdAttr::default()
    };
    let fd = bpf(BPF_PROG_GET_FD_BY_ID, &mut attr)?;
    // SAFETY: the kernel just returned this fd to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Current `CLOCK_BOOTTIME` in nanoseconds: the clock `bpf_ktime_get_boot_ns` reads, so
/// deadlines survive suspend the way the kernel sees them.
pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer; CLOCK_BOOTTIME always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;

#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// Writes one element (`BPF_MAP_UPDATE_ELEM`), for maps without batch support (LPM tries).
pub fn update_elem<K: Copy, V: Copy>(map: BorrowedFd<'_>, key: &K, value: &V) -> io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: key as *const K as u64,
        value: value as *const V as u64,
        ..ElemAttr::default()
    };
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
}

/// Deletes one element (`BPF_MAP_DELETE_ELEM`).
pub fn delete_elem<K: Copy>(map: BorrowedFd<'_>, key: &K) -> io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: key as *const K as u64,
        ..ElemAttr::default()
    };
    bpf(BPF_MAP_DELETE_ELEM, &mut attr).map(drop)
}

const BPF_OBJ_GET: libc::c_long = 7;

#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// Opens a pinned map or program (`BPF_OBJ_GET`), e.g. another tool's map.
pub fn obj_get(path: &std::path::Path) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut attr = ObjGetAttr {
        pathname: c.as_ptr() as u64,
        ..ObjGetAttr::default()
    };
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel just returned this fd to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Number of possible CPUs (the value count of per-CPU maps).
pub fn possible_cpus() -> io::Result<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    let mut n = 0;
    for part in text.trim().split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (usize, usize) = (
            a.parse().map_err(io::Error::other)?,
            b.parse().map_err(io::Error::other)?,
        );
        n += b - a + 1;
    }
    Ok(n)
}

/// [`update_elem`] with a value given as a slice (per-CPU maps take one value per CPU).
pub fn update_elem_raw<K: Copy, V: Copy>(
    map: BorrowedFd<'_>,
    key: &K,
    values: &[V],
) -> io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: key as *const K as u64,
        value: values.as_ptr() as u64,
        ..ElemAttr::default()
    };
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
}
