//! The raw bpf(2) calls that both the daemon and the test harness make and
//! aya 0.14 does not expose for them: creating a map from a `bpf_attr` of
//! the caller's choosing (an LRU hash of our own, or one naming BTF types),
//! pinning an fd and opening a pin, and reading a map's keys, values and
//! size (the harness reads FLOWS and every port's flow table this way: two
//! bpftool runs per table took 16 minutes for 10,000 ports). Written once
//! here so that the `bpf_attr` layouts cannot drift apart between the
//! daemon and its tests.
use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::Path,
};

pub const BPF_MAP_CREATE: libc::c_long = 0;
pub const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
pub const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
pub const BPF_OBJ_PIN: libc::c_long = 6;
pub const BPF_OBJ_GET: libc::c_long = 7;
pub const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
pub const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// `enum bpf_map_type` values.
pub const BPF_MAP_TYPE_HASH: u32 = 1;
pub const BPF_MAP_TYPE_LRU_HASH: u32 = 9;

/// `BPF_OBJ_NAME_LEN`: a map name's room, its NUL included.
pub const BPF_OBJ_NAME_LEN: usize = 16;

/// Runs the bpf(2) command `cmd` on `attr`; its non-negative return value
/// (an fd or 0, as `cmd` says).
///
/// # Safety
///
/// `attr` must be the `union bpf_attr` prefix that `cmd` reads, and every
/// pointer in it must be valid for what the kernel reads or writes there
/// for the length given beside it.
pub unsafe fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: the caller vouches for `attr` (see above); the size is its own.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `union bpf_attr` as BPF_MAP_CREATE reads it (the fields up to
/// `map_extra`; the kernel takes the rest as zero).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MapCreateAttr {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub map_flags: u32,
    pub inner_map_fd: u32,
    pub numa_node: u32,
    pub map_name: [u8; BPF_OBJ_NAME_LEN],
    pub map_ifindex: u32,
    pub btf_fd: u32,
    pub btf_key_type_id: u32,
    pub btf_value_type_id: u32,
    pub btf_vmlinux_value_type_id: u32,
    pub map_extra: u64,
}

/// `union bpf_attr` as BPF_OBJ_PIN and BPF_OBJ_GET read it.
#[repr(C)]
#[derive(Default)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// Creates a map as `attr` describes; its fd.
pub fn create_map(attr: &MapCreateAttr) -> io::Result<OwnedFd> {
    let mut attr = *attr;
    // SAFETY: BPF_MAP_CREATE reads a MapCreateAttr, which holds no pointers.
    let fd = unsafe { bpf(BPF_MAP_CREATE, &mut attr) }?;
    // SAFETY: BPF_MAP_CREATE returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Creates a BPF LRU hash map named `name` (at most 15 bytes of
/// `[A-Za-z0-9_.]`) with these sizes; its fd.
pub fn create_lru_hash(
    name: &str,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
) -> io::Result<OwnedFd> {
    let mut attr = MapCreateAttr {
        map_type: BPF_MAP_TYPE_LRU_HASH,
        key_size,
        value_size,
        max_entries,
        ..Default::default()
    };
    let bytes = name.as_bytes();
    if bytes.len() >= BPF_OBJ_NAME_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("map name {name:?} is too long"),
        ));
    }
    attr.map_name[..bytes.len()].copy_from_slice(bytes);
    create_map(&attr)
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// Pins the BPF object `fd` at `pin` (on bpffs).
pub fn obj_pin(fd: &OwnedFd, pin: &Path) -> io::Result<()> {
    let path = c_path(pin)?;
    let mut attr = ObjAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        ..Default::default()
    };
    // SAFETY: BPF_OBJ_PIN reads an ObjAttr; `path` outlives the call.
    unsafe { bpf(BPF_OBJ_PIN, &mut attr) }.map(drop)
}

/// A new fd for the object pinned at `pin`.
pub fn obj_get(pin: &Path) -> io::Result<OwnedFd> {
    let path = c_path(pin)?;
    let mut attr = ObjAttr {
        pathname: path.as_ptr() as u64,
        ..Default::default()
    };
    // SAFETY: BPF_OBJ_GET reads an ObjAttr; `path` outlives the call.
    let fd = unsafe { bpf(BPF_OBJ_GET, &mut attr) }?;
    // SAFETY: BPF_OBJ_GET returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `union bpf_attr` as BPF_MAP_LOOKUP_ELEM and BPF_MAP_GET_NEXT_KEY read
/// it (`value` is `next_key` for the latter).
#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `union bpf_attr` as BPF_MAP_GET_FD_BY_ID reads it.
#[repr(C)]
#[derive(Default)]
struct GetFdByIdAttr {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

/// `union bpf_attr` as BPF_OBJ_GET_INFO_BY_FD reads it.
#[repr(C)]
#[derive(Default)]
struct InfoByFdAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// Every key of the map `map` (keys of `key_size` bytes), in the kernel's
/// order. A key deleted while this walks may end the walk early (the
/// kernel then starts over from the first key, which is detected).
pub fn map_keys(map: BorrowedFd<'_>, key_size: usize) -> io::Result<Vec<Vec<u8>>> {
    let mut keys: Vec<Vec<u8>> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    loop {
        let mut next = vec![0u8; key_size];
        let mut attr = MapElemAttr {
            map_fd: map.as_raw_fd() as u32,
            // No key: the first one.
            key: keys.last().map_or(0, |key| key.as_ptr() as u64),
            value: next.as_mut_ptr() as u64,
            ..Default::default()
        };
        // SAFETY: BPF_MAP_GET_NEXT_KEY reads `key_size` bytes at `key` (or
        // none when it is 0) and writes as many to `next`; both outlive it.
        match unsafe { bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) } {
            Ok(_) if seen.insert(next.clone()) => keys.push(next),
            // Back at a key already seen: the last one went meanwhile.
            Ok(_) => return Ok(keys),
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => return Ok(keys),
            Err(err) => return Err(err),
        }
    }
}

/// The `value_size` bytes under `key` in `map`, or None when there is no
/// such key. For a map of maps the value is the inner map's id (4 bytes).
pub fn map_lookup(
    map: BorrowedFd<'_>,
    key: &[u8],
    value_size: usize,
) -> io::Result<Option<Vec<u8>>> {
    let mut value = vec![0u8; value_size];
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: key.as_ptr() as u64,
        value: value.as_mut_ptr() as u64,
        ..Default::default()
    };
    // SAFETY: BPF_MAP_LOOKUP_ELEM reads the map's key size at `key` (the
    // caller's key) and writes `value_size` bytes, the buffer's length.
    match unsafe { bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) } {
        Ok(_) => Ok(Some(value)),
        Err(err) if err.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(err) => Err(err),
    }
}

/// A new fd for the object with id `id` by the `BPF_*_GET_FD_BY_ID`
/// command `cmd` (a map, a program, a link, BTF); None when there is no
/// such object (any more).
pub fn obj_fd_by_id(cmd: libc::c_long, id: u32) -> io::Result<Option<OwnedFd>> {
    let mut attr = GetFdByIdAttr {
        id,
        ..Default::default()
    };
    // SAFETY: the BPF_*_GET_FD_BY_ID commands read a GetFdByIdAttr, which
    // holds no pointers.
    match unsafe { bpf(cmd, &mut attr) } {
        // SAFETY: the kernel returned a new fd that nothing else owns.
        Ok(fd) => Ok(Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })),
        Err(err) if err.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(err) => Err(err),
    }
}

/// A new fd for the map with id `id`; None when there is no such map (any
/// more).
pub fn map_fd_by_id(id: u32) -> io::Result<Option<OwnedFd>> {
    obj_fd_by_id(BPF_MAP_GET_FD_BY_ID, id)
}

/// The start of `struct bpf_map_info` (the kernel fills what fits).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MapInfo {
    pub map_type: u32,
    pub id: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub map_flags: u32,
    pub name: [u8; 16],
    pub ifindex: u32,
    pub btf_vmlinux_value_type_id: u32,
    pub netns_dev: u64,
    pub netns_ino: u64,
    /// 0 when the map was created without BTF.
    pub btf_id: u32,
    pub btf_key_type_id: u32,
    pub btf_value_type_id: u32,
    pub btf_vmlinux_id: u32,
}

/// Fills `info` with what BPF_OBJ_GET_INFO_BY_FD says about `fd` (a map, a
/// program, a link or BTF: the kernel writes the start of its info struct
/// for that kind, as much as fits).
///
/// # Safety
///
/// `T` must be plain data (`repr(C)`, every bit pattern valid) laid out as
/// the start of the kernel's info struct for `fd`'s kind, and any pointer
/// the caller put in it must be valid for the length given beside it.
pub unsafe fn obj_info<T>(fd: BorrowedFd<'_>, info: &mut T) -> io::Result<()> {
    let mut attr = InfoByFdAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of::<T>() as u32,
        info: info as *mut T as u64,
    };
    // SAFETY: BPF_OBJ_GET_INFO_BY_FD writes at most `info_len` bytes to
    // `info`, which is that large and outlives the call; the caller vouches
    // for the layout and the pointers in it.
    unsafe { bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) }?;
    Ok(())
}

/// What the map behind `map` was created with, and its id.
pub fn map_info(map: BorrowedFd<'_>) -> io::Result<MapInfo> {
    let mut info = MapInfo::default();
    // SAFETY: MapInfo is plain data laid out as `struct bpf_map_info`'s
    // start and holds no pointers.
    unsafe { obj_info(map, &mut info) }?;
    Ok(info)
}

/// What the harness reads about a map: its id and sizes, and the kernel
/// memory it is charged (`memlock` in its fdinfo, as bpftool prints
/// `bytes_memlock`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSize {
    pub id: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub memlock_bytes: u64,
}

/// The id, sizes and kernel memory of the map `map`.
pub fn map_size(map: BorrowedFd<'_>) -> io::Result<MapSize> {
    let info = map_info(map)?;
    let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", map.as_raw_fd()))?;
    let memlock_bytes = fdinfo
        .lines()
        .find_map(|line| line.strip_prefix("memlock:"))
        .and_then(|value| value.trim().parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no memlock in fdinfo"))?;
    Ok(MapSize {
        id: info.id,
        key_size: info.key_size,
        value_size: info.value_size,
        max_entries: info.max_entries,
        memlock_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_name_must_fit_the_kernels_room() {
        let err = create_lru_hash("sixteen_bytes_xx", 4, 4, 1).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("too long"), "{err}");
    }

    #[test]
    fn paths_with_a_nul_are_refused_before_any_call() {
        let err = obj_get(Path::new("bad\0pin")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn the_attrs_have_the_kernels_layout() {
        // union bpf_attr's map-create part up to map_extra: 72 bytes, and
        // the obj part (pathname, bpf_fd, file_flags, path_fd): 20 + padding.
        assert_eq!(std::mem::size_of::<MapCreateAttr>(), 72);
        assert_eq!(std::mem::offset_of!(MapCreateAttr, map_extra), 64);
        assert_eq!(std::mem::offset_of!(ObjAttr, path_fd), 16);
    }
}
