//! The bpf(2) commands aya 0.14 does not expose: detaching a link right
//! away (dropping the last reference to a link only schedules its release,
//! and until that runs the same program cannot be attached to the same hook
//! again: EEXIST), creating an LRU hash map of our own (a port's flow
//! table, an inner map of FLOWS), reading the id of a map in a map of
//! maps without opening it (aya's lookup opens it, two more syscalls),
//! changing many entries of a map of maps in one call (each call waits for
//! an RCU grace period; see `table_writer`), what a pinned TCX link is
//! attached to. The calls the harness makes too (creating a map, opening a
//! pin, reading an element of any size) and the raw syscall live in the
//! shared `mdr_bpffs::sys`.
use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd},
    path::Path,
};

pub use mdr_bpffs::sys::MapInfo;
pub use mdr_bpffs::sys::create_lru_hash;
/// The `value_size` bytes under a key of a map: aya reads only typed
/// values, and the data-section maps `same_program` compares have the
/// object's sizes.
pub use mdr_bpffs::sys::map_lookup;
use mdr_bpffs::sys::{bpf, map_info, obj_fd_by_id, obj_get, obj_info};

const BPF_BTF_GET_FD_BY_ID: libc::c_long = 19;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
const BPF_LINK_DETACH: libc::c_long = 34;

/// `enum bpf_link_type` and `enum bpf_attach_type` values of a TCX link.
const BPF_LINK_TYPE_TCX: u32 = 11;
const BPF_TCX_INGRESS: u32 = 46;

/// `union bpf_attr` as the BPF_MAP_*_BATCH commands read it.
#[repr(C)]
#[derive(Default)]
struct MapBatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// The start of `struct bpf_link_info` for a TCX link: type, id, prog_id,
/// then (8-byte aligned) the union whose `tcx` member is ifindex and
/// attach_type. The rest of the union is room the kernel may fill.
#[repr(C)]
#[derive(Default)]
struct TcxLinkInfo {
    link_type: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    ifindex: u32,
    attach_type: u32,
    _rest: [u64; 6],
}

/// `union bpf_attr` as BPF_LINK_DETACH reads it.
#[repr(C)]
#[derive(Default)]
struct LinkDetachAttr {
    link_fd: u32,
}

/// The start of `struct bpf_btf_info`.
#[repr(C)]
#[derive(Default)]
struct BtfInfo {
    btf: u64,
    btf_size: u32,
    id: u32,
    name: u64,
    name_len: u32,
    kernel_btf: u32,
}

/// What the map pinned at `pin` was created with.
pub fn pinned_map_info(pin: &Path) -> io::Result<MapInfo> {
    map_info(obj_get(pin)?.as_fd())
}

/// The raw BTF the kernel holds under `id` (what a map was created with).
pub fn btf_by_id(id: u32) -> io::Result<Vec<u8>> {
    let btf = obj_fd_by_id(BPF_BTF_GET_FD_BY_ID, id)?
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
    // First the size, then the bytes.
    let mut info = BtfInfo::default();
    // SAFETY: BtfInfo is plain data laid out as `struct bpf_btf_info`'s
    // start; its pointer is null (size only).
    unsafe { obj_info(btf.as_fd(), &mut info) }?;
    let mut data = vec![0u8; info.btf_size as usize];
    let mut info = BtfInfo {
        btf: data.as_mut_ptr() as u64,
        btf_size: data.len() as u32,
        ..Default::default()
    };
    // SAFETY: as above; `btf` points to `data`, `btf_size` bytes, which
    // outlives the call.
    unsafe { obj_info(btf.as_fd(), &mut info) }?;
    data.truncate(info.btf_size as usize);
    Ok(data)
}

/// Where the TCX ingress link pinned at `pin` runs which program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcxIngressLink {
    pub ifindex: u32,
    pub prog_id: u32,
}

/// What the link pinned at `pin` is, if it is a TCX ingress link (None for
/// any other link; an error when there is no such pin).
pub fn tcx_ingress_link(pin: &Path) -> io::Result<Option<TcxIngressLink>> {
    let link = obj_get(pin)?;
    let mut info = TcxLinkInfo::default();
    // SAFETY: TcxLinkInfo is plain data laid out as `struct bpf_link_info`'s
    // start and holds no pointers.
    unsafe { obj_info(link.as_fd(), &mut info) }?;
    Ok(
        (info.link_type == BPF_LINK_TYPE_TCX && info.attach_type == BPF_TCX_INGRESS).then_some(
            TcxIngressLink {
                ifindex: info.ifindex,
                prog_id: info.prog_id,
            },
        ),
    )
}

/// The id of the map behind `map`.
pub fn map_id(map: BorrowedFd<'_>) -> io::Result<u32> {
    Ok(map_info(map)?.id)
}

/// Sets `keys[i]` to the map `inner[i]` in the map of maps `map`, in one
/// call (the kernel waits for one RCU grace period for all of them).
pub fn put_inner_maps(
    map: BorrowedFd<'_>,
    keys: &[[u8; 4]],
    inner: &[BorrowedFd<'_>],
) -> io::Result<()> {
    assert_eq!(keys.len(), inner.len());
    if keys.is_empty() {
        return Ok(());
    }
    let values: Vec<u32> = inner.iter().map(|fd| fd.as_raw_fd() as u32).collect();
    let mut attr = MapBatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: keys.len() as u32,
        map_fd: map.as_raw_fd() as u32,
        ..Default::default()
    };
    // SAFETY: BPF_MAP_UPDATE_BATCH reads `count` keys and values, which
    // `keys` and `values` hold and outlive the call.
    unsafe { bpf(BPF_MAP_UPDATE_BATCH, &mut attr) }.map(drop)
}

/// Deletes `keys` from the map of maps `map` in one call; keys that are not
/// there are skipped.
pub fn delete_inner_maps(map: BorrowedFd<'_>, keys: &[[u8; 4]]) -> io::Result<()> {
    // The batch stops at the first missing key (ENOENT): go on after it.
    let mut rest = keys;
    while !rest.is_empty() {
        let mut attr = MapBatchAttr {
            keys: rest.as_ptr() as u64,
            count: rest.len() as u32,
            map_fd: map.as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: BPF_MAP_DELETE_BATCH reads `count` keys, which `rest`
        // holds and outlives the call.
        match unsafe { bpf(BPF_MAP_DELETE_BATCH, &mut attr) } {
            Ok(_) => return Ok(()),
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {
                // `count` now says how many were deleted before the missing one.
                rest = &rest[(attr.count as usize + 1).min(rest.len())..];
            }
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Detaches the link pinned at `pin` from its hook immediately. The pin
/// itself stays (the caller removes it).
pub fn detach_pinned_link(pin: &Path) -> io::Result<()> {
    let link = obj_get(pin)?;
    let mut detach = LinkDetachAttr {
        link_fd: std::os::fd::AsRawFd::as_raw_fd(&link) as u32,
    };
    // SAFETY: BPF_LINK_DETACH reads a LinkDetachAttr, which holds no
    // pointers.
    unsafe { bpf(BPF_LINK_DETACH, &mut detach) }?;
    Ok(())
}

/// The id of the map stored under `key` in the map of maps `map`, or None
/// when there is no such key.
pub fn inner_map_id(map: BorrowedFd<'_>, key: &[u8; 4]) -> io::Result<Option<u32>> {
    let value = map_lookup(map, key, 4)?;
    Ok(value.map(|id| u32::from_ne_bytes(id[..4].try_into().expect("4 bytes"))))
}
