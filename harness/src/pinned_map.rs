//! A BPF map of a test's choosing, created with BTF and pinned: what a
//! daemon of another build, whose map types were laid out differently,
//! would have left under `--bpffs`.
//!
//! The BTF is written here by hand (ints, byte arrays and structs are all
//! map keys and values need) and loaded with BPF_BTF_LOAD; the map is
//! created with BPF_MAP_CREATE naming its key and value types, as a loader
//! does, and pinned with BPF_OBJ_PIN. Nothing here comes from the daemon's
//! code: the test's map must not share a bug with what it tests. (The raw
//! map-create and pin calls are the kernel's ABI, shared from `mdr_bpffs`.)
use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::path::Path;

use anyhow::{Context, Result};
use mdr_bpffs::sys::{self as bpf_sys, MapCreateAttr};

/// A field's type.
#[derive(Clone, Copy, Debug)]
pub enum Field {
    U8Array(u32),
    U16,
    U32,
    U64,
}

/// A key or value type.
#[derive(Clone, Debug)]
pub enum Layout {
    U32,
    /// name, size in bytes, and (field name, type, byte offset) per field.
    Struct {
        name: &'static str,
        size: u32,
        fields: Vec<(&'static str, Field, u32)>,
    },
}

/// `BPF_MAP_TYPE_HASH`.
pub const MAP_TYPE_HASH: u32 = bpf_sys::BPF_MAP_TYPE_HASH;

/// Creates a map of `map_type` with `max_entries`, keyed and valued by the
/// given layouts, and pins it at `pin`.
pub fn create(
    pin: &Path,
    map_type: u32,
    max_entries: u32,
    key: &Layout,
    value: &Layout,
) -> Result<()> {
    let mut btf = BtfWriter::new();
    let key_type = btf.layout(key);
    let value_type = btf.layout(value);
    let btf = load_btf(&btf.finish()).context("BPF_BTF_LOAD")?;
    let map = bpf_sys::create_map(&MapCreateAttr {
        map_type,
        key_size: size_of_layout(key),
        value_size: size_of_layout(value),
        max_entries,
        btf_fd: btf.as_raw_fd() as u32,
        btf_key_type_id: key_type,
        btf_value_type_id: value_type,
        ..Default::default()
    })
    .context("BPF_MAP_CREATE")?;
    bpf_sys::obj_pin(&map, pin).with_context(|| format!("pinning {}", pin.display()))
}

fn size_of_layout(layout: &Layout) -> u32 {
    match layout {
        Layout::U32 => 4,
        Layout::Struct { size, .. } => *size,
    }
}

const BTF_KIND_INT: u32 = 1;
const BTF_KIND_ARRAY: u32 = 3;
const BTF_KIND_STRUCT: u32 = 4;

/// Writes BTF: one type after another, IDs from 1.
struct BtfWriter {
    types: Vec<u8>,
    strings: Vec<u8>,
    count: u32,
}

impl BtfWriter {
    fn new() -> Self {
        Self {
            types: Vec::new(),
            strings: vec![0],
            count: 0,
        }
    }

    fn string(&mut self, text: &str) -> u32 {
        let offset = self.strings.len() as u32;
        self.strings.extend_from_slice(text.as_bytes());
        self.strings.push(0);
        offset
    }

    fn push(&mut self, words: &[u32]) -> u32 {
        for word in words {
            self.types.extend_from_slice(&word.to_le_bytes());
        }
        self.count += 1;
        self.count
    }

    /// An unsigned integer named as Rust's (`u32`, ...), as bpf-linker
    /// writes it.
    fn int(&mut self, bytes: u32) -> u32 {
        let name = self.string(&format!("u{}", bytes * 8));
        self.push(&[name, BTF_KIND_INT << 24, bytes, bytes * 8])
    }

    fn field(&mut self, field: Field) -> u32 {
        match field {
            Field::U8Array(count) => {
                let byte = self.int(1);
                let index = self.int(4);
                self.push(&[0, BTF_KIND_ARRAY << 24, 0, byte, index, count])
            }
            Field::U16 => self.int(2),
            Field::U32 => self.int(4),
            Field::U64 => self.int(8),
        }
    }

    fn layout(&mut self, layout: &Layout) -> u32 {
        match layout {
            Layout::U32 => self.int(4),
            Layout::Struct { name, size, fields } => {
                let members: Vec<(u32, u32, u32)> = fields
                    .iter()
                    .map(|(field_name, field, offset)| {
                        let ty = self.field(*field);
                        (self.string(field_name), ty, offset * 8)
                    })
                    .collect();
                let name = self.string(name);
                let mut words = vec![name, BTF_KIND_STRUCT << 24 | members.len() as u32, *size];
                for (member_name, ty, bits) in members {
                    words.extend([member_name, ty, bits]);
                }
                self.push(&words)
            }
        }
    }

    fn finish(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&0xeb9fu16.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        let type_len = self.types.len() as u32;
        for word in [24, 0, type_len, type_len, self.strings.len() as u32] {
            out.extend_from_slice(&word.to_le_bytes());
        }
        out.extend_from_slice(&self.types);
        out.extend_from_slice(&self.strings);
        out
    }
}

const BPF_BTF_LOAD: libc::c_long = 18;

/// `union bpf_attr` as BPF_BTF_LOAD reads it.
#[repr(C)]
#[derive(Default)]
struct BtfLoadAttr {
    btf: u64,
    btf_log_buf: u64,
    btf_size: u32,
    btf_log_size: u32,
    btf_log_level: u32,
}

fn load_btf(blob: &[u8]) -> io::Result<OwnedFd> {
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = BtfLoadAttr {
        btf: blob.as_ptr() as u64,
        btf_size: blob.len() as u32,
        btf_log_buf: log.as_mut_ptr() as u64,
        btf_log_size: log.len() as u32,
        btf_log_level: 1,
    };
    // SAFETY: BPF_BTF_LOAD reads a BtfLoadAttr: `btf_size` bytes of `blob`
    // and up to `btf_log_size` bytes written to `log`, both outliving it.
    let fd = unsafe { bpf_sys::bpf(BPF_BTF_LOAD, &mut attr) }.map_err(|err| {
        let log = String::from_utf8_lossy(&log);
        io::Error::new(err.kind(), format!("{err}: {}", log.trim_end_matches('\0')))
    })?;
    // SAFETY: BPF_BTF_LOAD returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
