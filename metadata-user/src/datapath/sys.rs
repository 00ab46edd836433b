//! The one bpf(2) command aya 0.14 does not expose: detaching a link right
//! away. Dropping the last reference to a link only schedules its release,
//! and until that runs the same program cannot be attached to the same hook
//! again (EEXIST).
use std::{
    ffi::CString,
    io,
    os::fd::{FromRawFd as _, OwnedFd},
    path::Path,
};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_BTF_GET_FD_BY_ID: libc::c_long = 19;
const BPF_LINK_DETACH: libc::c_long = 34;

/// `union bpf_attr` as BPF_OBJ_GET reads it.
#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// `union bpf_attr` as BPF_LINK_DETACH reads it.
#[repr(C)]
#[derive(Default)]
struct LinkDetachAttr {
    link_fd: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a properly sized, initialised bpf_attr prefix for `cmd`.
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

/// `union bpf_attr` as BPF_OBJ_GET_INFO_BY_FD reads it.
#[repr(C)]
#[derive(Default)]
struct InfoByFdAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `union bpf_attr` as BPF_BTF_GET_FD_BY_ID reads it.
#[repr(C)]
#[derive(Default)]
struct GetFdByIdAttr {
    id: u32,
    next_id: u32,
    open_flags: u32,
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

/// A new fd for the object pinned at `pin`.
fn obj_get(pin: &Path) -> io::Result<OwnedFd> {
    let path = CString::new(pin.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut get = ObjGetAttr {
        pathname: path.as_ptr() as u64,
        ..Default::default()
    };
    let fd = bpf(BPF_OBJ_GET, &mut get)?;
    // SAFETY: BPF_OBJ_GET returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Fills `info` (a prefix of the kernel's info struct for `fd`'s kind).
fn info_by_fd<T>(fd: &OwnedFd, info: &mut T) -> io::Result<()> {
    let mut attr = InfoByFdAttr {
        bpf_fd: std::os::fd::AsRawFd::as_raw_fd(fd) as u32,
        info_len: std::mem::size_of::<T>() as u32,
        info: info as *mut T as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(())
}

/// What the map pinned at `pin` was created with.
pub fn pinned_map_info(pin: &Path) -> io::Result<MapInfo> {
    let map = obj_get(pin)?;
    let mut info = MapInfo::default();
    info_by_fd(&map, &mut info)?;
    Ok(info)
}

/// The raw BTF the kernel holds under `id` (what a map was created with).
pub fn btf_by_id(id: u32) -> io::Result<Vec<u8>> {
    let mut attr = GetFdByIdAttr {
        id,
        ..Default::default()
    };
    let fd = bpf(BPF_BTF_GET_FD_BY_ID, &mut attr)?;
    // SAFETY: BPF_BTF_GET_FD_BY_ID returned a new fd that nothing else owns.
    let btf = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // First the size, then the bytes.
    let mut info = BtfInfo::default();
    info_by_fd(&btf, &mut info)?;
    let mut data = vec![0u8; info.btf_size as usize];
    let mut info = BtfInfo {
        btf: data.as_mut_ptr() as u64,
        btf_size: data.len() as u32,
        ..Default::default()
    };
    info_by_fd(&btf, &mut info)?;
    data.truncate(info.btf_size as usize);
    Ok(data)
}

/// Detaches the link pinned at `pin` from its hook immediately. The pin
/// itself stays (the caller removes it).
pub fn detach_pinned_link(pin: &Path) -> io::Result<()> {
    let link = obj_get(pin)?;
    let mut detach = LinkDetachAttr {
        link_fd: std::os::fd::AsRawFd::as_raw_fd(&link) as u32,
    };
    bpf(BPF_LINK_DETACH, &mut detach)?;
    Ok(())
}
