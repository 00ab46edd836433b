//! Just enough of BTF (the kernel's type format) to tell whether two maps
//! hold values of the same layout: a parser for the raw format, and a
//! canonical rendering of a type that names every field with its type and
//! bit offset. Two renderings are equal exactly when the layouts agree, so
//! a map whose fields moved, changed type or were renamed is told apart
//! from one whose size merely matches.
//!
//! The format is the kernel's `Documentation/bpf/btf.rst`: a header, a
//! types section (a `btf_type` per type, followed by a kind-specific tail)
//! and a strings section. Type ID 0 is `void`; the first type is ID 1.
use std::fmt::Write as _;

use anyhow::{Context as _, bail, ensure};

const MAGIC: u16 = 0xeb9f;

/// The kinds this module needs to tell apart (`BTF_KIND_*`).
mod kind {
    pub const INT: u32 = 1;
    pub const PTR: u32 = 2;
    pub const ARRAY: u32 = 3;
    pub const STRUCT: u32 = 4;
    pub const UNION: u32 = 5;
    pub const ENUM: u32 = 6;
    pub const FWD: u32 = 7;
    pub const TYPEDEF: u32 = 8;
    pub const VOLATILE: u32 = 9;
    pub const CONST: u32 = 10;
    pub const RESTRICT: u32 = 11;
    pub const FUNC: u32 = 12;
    pub const FUNC_PROTO: u32 = 13;
    pub const VAR: u32 = 14;
    pub const DATASEC: u32 = 15;
    pub const FLOAT: u32 = 16;
    pub const DECL_TAG: u32 = 17;
    pub const TYPE_TAG: u32 = 18;
    pub const ENUM64: u32 = 19;
}

/// One type: the common `btf_type` header and its kind-specific tail.
#[derive(Clone, Debug)]
struct Type {
    name_off: u32,
    kind: u32,
    kind_flag: bool,
    /// `size` for sized kinds, `type` for those that refer to another.
    size_or_type: u32,
    tail: Tail,
}

#[derive(Clone, Debug)]
enum Tail {
    None,
    /// INT: encoding, bit offset and bit count packed as the kernel does.
    Int(u32),
    Array {
        elem: u32,
        count: u32,
    },
    /// STRUCT, UNION: (name, type, offset) per member.
    Members(Vec<(u32, u32, u32)>),
    /// ENUM, ENUM64: (name, value) per enumerator.
    Enumerators(Vec<(u32, i64)>),
    /// DATASEC: (var type, offset, size) per variable.
    Vars(Vec<(u32, u32, u32)>),
}

/// A parsed BTF blob: from an object file's `.BTF` section, or the kernel's
/// copy of the BTF a map was created with.
#[derive(Clone, Debug)]
pub struct Btf {
    /// Index = type ID; index 0 is a placeholder for `void`.
    types: Vec<Type>,
    strings: Vec<u8>,
}

/// Reads little-endian u32s from a byte slice, failing past its end.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn u32(&mut self) -> anyhow::Result<u32> {
        let end = self.at + 4;
        let bytes = self
            .bytes
            .get(self.at..end)
            .with_context(|| format!("BTF truncated at byte {}", self.at))?;
        self.at = end;
        Ok(u32::from_le_bytes(bytes.try_into().expect("four bytes")))
    }
}

impl Btf {
    pub fn parse(data: &[u8]) -> anyhow::Result<Self> {
        ensure!(data.len() >= 24, "BTF shorter than its header");
        let magic = u16::from_le_bytes([data[0], data[1]]);
        ensure!(magic == MAGIC, "not little-endian BTF (magic {magic:#x})");
        let mut header = Reader { bytes: data, at: 4 };
        let header_len = header.u32()? as usize;
        let (type_off, type_len) = (header.u32()? as usize, header.u32()? as usize);
        let (str_off, str_len) = (header.u32()? as usize, header.u32()? as usize);
        let section = |off: usize, len: usize| {
            let start = header_len.checked_add(off)?;
            data.get(start..start.checked_add(len)?)
        };
        let types_section = section(type_off, type_len).context("BTF types out of bounds")?;
        let strings = section(str_off, str_len)
            .context("BTF strings out of bounds")?
            .to_vec();

        let mut types = vec![Type {
            name_off: 0,
            kind: 0,
            kind_flag: false,
            size_or_type: 0,
            tail: Tail::None,
        }];
        let mut reader = Reader {
            bytes: types_section,
            at: 0,
        };
        while reader.at < types_section.len() {
            types.push(Self::parse_type(&mut reader)?);
        }
        Ok(Self { types, strings })
    }

    fn parse_type(reader: &mut Reader<'_>) -> anyhow::Result<Type> {
        let name_off = reader.u32()?;
        let info = reader.u32()?;
        let size_or_type = reader.u32()?;
        let vlen = info & 0xffff;
        let kind = (info >> 24) & 0x1f;
        let kind_flag = info >> 31 == 1;
        let tail = match kind {
            kind::INT => Tail::Int(reader.u32()?),
            kind::ARRAY => {
                let elem = reader.u32()?;
                let _index_type = reader.u32()?;
                Tail::Array {
                    elem,
                    count: reader.u32()?,
                }
            }
            kind::STRUCT | kind::UNION => Tail::Members(
                (0..vlen)
                    .map(|_| Ok((reader.u32()?, reader.u32()?, reader.u32()?)))
                    .collect::<anyhow::Result<_>>()?,
            ),
            kind::ENUM => Tail::Enumerators(
                (0..vlen)
                    .map(|_| Ok((reader.u32()?, i64::from(reader.u32()? as i32))))
                    .collect::<anyhow::Result<_>>()?,
            ),
            kind::ENUM64 => Tail::Enumerators(
                (0..vlen)
                    .map(|_| {
                        let name = reader.u32()?;
                        let low = u64::from(reader.u32()?);
                        let high = u64::from(reader.u32()?);
                        Ok((name, (high << 32 | low) as i64))
                    })
                    .collect::<anyhow::Result<_>>()?,
            ),
            kind::FUNC_PROTO => {
                // (name, type) per parameter: not part of any layout.
                for _ in 0..vlen {
                    reader.u32()?;
                    reader.u32()?;
                }
                Tail::None
            }
            kind::VAR | kind::DECL_TAG => {
                reader.u32()?;
                Tail::None
            }
            kind::DATASEC => Tail::Vars(
                (0..vlen)
                    .map(|_| Ok((reader.u32()?, reader.u32()?, reader.u32()?)))
                    .collect::<anyhow::Result<_>>()?,
            ),
            kind::PTR
            | kind::FWD
            | kind::TYPEDEF
            | kind::VOLATILE
            | kind::CONST
            | kind::RESTRICT
            | kind::FUNC
            | kind::FLOAT
            | kind::TYPE_TAG => Tail::None,
            other => bail!("unknown BTF kind {other}"),
        };
        Ok(Type {
            name_off,
            kind,
            kind_flag,
            size_or_type,
            tail,
        })
    }

    fn get(&self, id: u32) -> anyhow::Result<&Type> {
        self.types
            .get(id as usize)
            .with_context(|| format!("BTF type {id} does not exist"))
    }

    fn name(&self, offset: u32) -> &str {
        let start = offset as usize;
        self.strings
            .get(start..)
            .and_then(|rest| rest.split(|&b| b == 0).next())
            .and_then(|name| std::str::from_utf8(name).ok())
            .unwrap_or("?")
    }

    /// Follows typedefs and qualifiers (`const`, `volatile`, ...), which
    /// change nothing about the bytes.
    fn resolve(&self, mut id: u32) -> anyhow::Result<u32> {
        for _ in 0..32 {
            let ty = self.get(id)?;
            match ty.kind {
                kind::TYPEDEF | kind::VOLATILE | kind::CONST | kind::RESTRICT | kind::TYPE_TAG => {
                    id = ty.size_or_type
                }
                _ => return Ok(id),
            }
        }
        bail!("BTF type {id}: a chain of typedefs too long to follow")
    }

    /// The type's size in bytes (for the sized kinds a map key or value
    /// can be).
    pub fn size_of(&self, id: u32) -> anyhow::Result<u32> {
        let ty = self.get(self.resolve(id)?)?;
        match (&ty.tail, ty.kind) {
            (Tail::Array { elem, count }, _) => Ok(self.size_of(*elem)?.saturating_mul(*count)),
            (_, kind::PTR) => Ok(8),
            (
                _,
                kind::INT | kind::STRUCT | kind::UNION | kind::ENUM | kind::ENUM64 | kind::FLOAT,
            ) => Ok(ty.size_or_type),
            _ => bail!("BTF type {id} has no size"),
        }
    }

    /// The layout of type `id` as one line: equal for two types exactly
    /// when their bytes mean the same fields (names, types, offsets).
    pub fn layout(&self, id: u32) -> anyhow::Result<String> {
        let mut out = String::new();
        self.write_layout(id, &mut out, 0)?;
        Ok(out)
    }

    fn write_layout(&self, id: u32, out: &mut String, depth: usize) -> anyhow::Result<()> {
        ensure!(depth < 16, "BTF type nested too deep");
        if id == 0 {
            out.push_str("void");
            return Ok(());
        }
        let id = self.resolve(id)?;
        let ty = self.get(id)?;
        let name = self.name(ty.name_off);
        match (&ty.tail, ty.kind) {
            (Tail::Int(encoding), _) => {
                let _ = write!(out, "int {name}/{}/{encoding:#x}", ty.size_or_type);
            }
            (_, kind::PTR) => {
                // The target's name only: pointers may form cycles, and map
                // keys and values hold none worth following.
                let target = self.get(self.resolve(ty.size_or_type)?)?;
                let _ = write!(out, "*{}", self.name(target.name_off));
            }
            (Tail::Array { elem, count }, _) => {
                out.push('[');
                self.write_layout(*elem, out, depth + 1)?;
                let _ = write!(out, "; {count}]");
            }
            (Tail::Members(members), kind) => {
                let word = if kind == kind::UNION {
                    "union"
                } else {
                    "struct"
                };
                let _ = write!(out, "{word} {name}/{}{{", ty.size_or_type);
                for (index, (member_name, member_type, offset)) in members.iter().enumerate() {
                    if index > 0 {
                        out.push_str(", ");
                    }
                    // With kind_flag the offset also packs a bitfield size;
                    // written whole, so either way it is compared whole.
                    let _ = write!(
                        out,
                        "{}@{offset}{}: ",
                        self.name(*member_name),
                        if ty.kind_flag { "k" } else { "" }
                    );
                    self.write_layout(*member_type, out, depth + 1)?;
                }
                out.push('}');
            }
            (Tail::Enumerators(values), _) => {
                let _ = write!(out, "enum {name}/{}{{", ty.size_or_type);
                for (index, (value_name, value)) in values.iter().enumerate() {
                    if index > 0 {
                        out.push_str(", ");
                    }
                    let _ = write!(out, "{}={value}", self.name(*value_name));
                }
                out.push('}');
            }
            (_, kind::FLOAT) => {
                let _ = write!(out, "float {name}/{}", ty.size_or_type);
            }
            (_, kind::FWD) => {
                let _ = write!(out, "fwd {name}");
            }
            (_, other) => bail!("BTF type {id} (kind {other}) cannot be a map's key or value"),
        }
        Ok(())
    }

    /// The maps an object file defines in its `.maps` section, with what
    /// the loader creates them from (aya's and libbpf's BTF map
    /// definitions: a struct whose `type`, `key`, `value` and `max_entries`
    /// members carry the map's shape in their types).
    pub fn map_definitions(&self) -> anyhow::Result<Vec<MapDefinition>> {
        let Some(section) = self
            .types
            .iter()
            .find(|ty| ty.kind == kind::DATASEC && self.name(ty.name_off) == ".maps")
        else {
            return Ok(Vec::new());
        };
        let Tail::Vars(vars) = &section.tail else {
            return Ok(Vec::new());
        };
        let mut maps = Vec::new();
        for (var_id, _, _) in vars {
            let var = self.get(*var_id)?;
            let name = self.name(var.name_off).to_owned();
            let definition = self.get(self.resolve(var.size_or_type)?)?;
            let Tail::Members(members) = &definition.tail else {
                bail!("map {name}: its definition is not a struct");
            };
            let member = |wanted: &str| {
                members
                    .iter()
                    .find(|(member_name, _, _)| self.name(*member_name) == wanted)
                    .map(|(_, member_type, _)| *member_type)
            };
            // `key: *const K`: the pointer's target is the key type.
            let pointee = |wanted: &str| -> anyhow::Result<Option<u32>> {
                let Some(id) = member(wanted) else {
                    return Ok(None);
                };
                let ptr = self.get(self.resolve(id)?)?;
                ensure!(
                    ptr.kind == kind::PTR,
                    "map {name}: {wanted} is not a pointer"
                );
                Ok(Some(ptr.size_or_type))
            };
            // `max_entries: *const [i32; N]`: N is the number.
            let number = |wanted: &str| -> anyhow::Result<Option<u32>> {
                let Some(array) = pointee(wanted)? else {
                    return Ok(None);
                };
                match &self.get(self.resolve(array)?)?.tail {
                    Tail::Array { count, .. } => Ok(Some(*count)),
                    _ => bail!("map {name}: {wanted} does not point to an array"),
                }
            };
            // A map of maps: `values: [*const Inner; 0]`, where Inner is
            // the definition of the maps it holds.
            let inner = match member("values") {
                Some(values) => match &self.get(self.resolve(values)?)?.tail {
                    Tail::Array { elem, .. } => {
                        let ptr = self.get(self.resolve(*elem)?)?;
                        ensure!(ptr.kind == kind::PTR, "map {name}: values holds no pointer");
                        Some(self.inner_types(ptr.size_or_type, &name)?)
                    }
                    _ => bail!("map {name}: values is not an array"),
                },
                None => None,
            };
            maps.push(MapDefinition {
                map_type: number("type")?.with_context(|| format!("map {name}: no type"))?,
                max_entries: number("max_entries")?.unwrap_or(0),
                key_type: pointee("key")?.unwrap_or(0),
                value_type: pointee("value")?.unwrap_or(0),
                inner,
                name,
            });
        }
        Ok(maps)
    }
}

/// One map as an object file defines it; type IDs refer to that file's BTF.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapDefinition {
    pub name: String,
    pub map_type: u32,
    pub max_entries: u32,
    /// 0 when the definition names no key type (e.g. ring buffers).
    pub key_type: u32,
    pub value_type: u32,
    /// For a map of maps: the key and value types of the maps it holds.
    pub inner: Option<(u32, u32)>,
}

impl Btf {
    /// The key and value types of the map definition struct `id`.
    fn inner_types(&self, id: u32, outer: &str) -> anyhow::Result<(u32, u32)> {
        let definition = self.get(self.resolve(id)?)?;
        let Tail::Members(members) = &definition.tail else {
            bail!("map {outer}: its inner map definition is not a struct");
        };
        let pointee = |wanted: &str| -> anyhow::Result<u32> {
            let (_, ty, _) = members
                .iter()
                .find(|(member_name, _, _)| self.name(*member_name) == wanted)
                .with_context(|| format!("map {outer}: the inner definition has no {wanted}"))?;
            let ptr = self.get(self.resolve(*ty)?)?;
            ensure!(
                ptr.kind == kind::PTR,
                "map {outer}: inner {wanted} is not a pointer"
            );
            Ok(ptr.size_or_type)
        };
        Ok((pointee("key")?, pointee("value")?))
    }
}

/// Builds BTF blobs by hand: for this module's tests, and for tests that
/// need a map created with a layout of their choosing.
#[cfg(test)]
pub mod build {
    #[derive(Default)]
    pub struct BtfBuilder {
        types: Vec<u8>,
        strings: Vec<u8>,
        count: u32,
    }

    impl BtfBuilder {
        pub fn new() -> Self {
            Self {
                strings: vec![0],
                ..Default::default()
            }
        }

        fn string(&mut self, text: &str) -> u32 {
            if text.is_empty() {
                return 0;
            }
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

        fn info(kind: u32, vlen: u32) -> u32 {
            kind << 24 | vlen
        }

        /// An unsigned integer of `size` bytes.
        pub fn int(&mut self, name: &str, size: u32) -> u32 {
            let name = self.string(name);
            self.push(&[name, Self::info(super::kind::INT, 0), size, size * 8])
        }

        pub fn array(&mut self, elem: u32, index: u32, count: u32) -> u32 {
            self.push(&[0, Self::info(super::kind::ARRAY, 0), 0, elem, index, count])
        }

        pub fn ptr(&mut self, target: u32) -> u32 {
            self.push(&[0, Self::info(super::kind::PTR, 0), target])
        }

        /// A struct of `size` bytes; members are (name, type, byte offset).
        pub fn structure(&mut self, name: &str, size: u32, members: &[(&str, u32, u32)]) -> u32 {
            let name = self.string(name);
            let mut words = vec![
                name,
                Self::info(super::kind::STRUCT, members.len() as u32),
                size,
            ];
            for (member, ty, offset) in members {
                words.extend([self.string(member), *ty, offset * 8]);
            }
            self.push(&words)
        }

        pub fn var(&mut self, name: &str, ty: u32) -> u32 {
            let name = self.string(name);
            self.push(&[name, Self::info(super::kind::VAR, 0), ty, 1])
        }

        pub fn datasec(&mut self, name: &str, vars: &[u32]) -> u32 {
            let name = self.string(name);
            let mut words = vec![name, Self::info(super::kind::DATASEC, vars.len() as u32), 0];
            for var in vars {
                words.extend([*var, 0, 0]);
            }
            self.push(&words)
        }

        pub fn finish(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&0xeb9fu16.to_le_bytes());
            out.extend_from_slice(&[1, 0]);
            for word in [
                24,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ] {
                out.extend_from_slice(&word.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{build::BtfBuilder, *};

    /// `struct Entry { addr: [u8; 4], index: u32 }` and the same eight
    /// bytes with the two fields swapped.
    fn two_layouts() -> (Btf, u32, u32) {
        let mut b = BtfBuilder::new();
        let u8_ = b.int("u8", 1);
        let u32_ = b.int("u32", 4);
        let addr = b.array(u8_, u32_, 4);
        let one = b.structure("Entry", 8, &[("addr", addr, 0), ("index", u32_, 4)]);
        let other = b.structure("Entry", 8, &[("index", u32_, 0), ("addr", addr, 4)]);
        (Btf::parse(&b.finish()).unwrap(), one, other)
    }

    #[test]
    fn same_size_other_field_order_is_another_layout() {
        let (btf, one, other) = two_layouts();
        assert_eq!(btf.size_of(one).unwrap(), 8);
        assert_eq!(btf.size_of(other).unwrap(), 8);
        assert_eq!(
            btf.layout(one).unwrap(),
            "struct Entry/8{addr@0: [int u8/1/0x8; 4], index@32: int u32/4/0x20}"
        );
        assert_ne!(btf.layout(one).unwrap(), btf.layout(other).unwrap());
    }

    #[test]
    fn map_definitions_come_from_the_maps_section() {
        let mut b = BtfBuilder::new();
        let int = b.int("int", 4);
        let u32_ = b.int("u32", 4);
        let hash = b.array(int, int, 1);
        let entries = b.array(int, int, 1024);
        let (type_ptr, entries_ptr) = (b.ptr(hash), b.ptr(entries));
        let (key_ptr, value_ptr) = (b.ptr(u32_), b.ptr(u32_));
        let def = b.structure(
            "HashMap",
            32,
            &[
                ("type", type_ptr, 0),
                ("key", key_ptr, 8),
                ("value", value_ptr, 16),
                ("max_entries", entries_ptr, 24),
            ],
        );
        let var = b.var("PORTS", def);
        b.datasec(".maps", &[var]);
        let btf = Btf::parse(&b.finish()).unwrap();
        assert_eq!(
            btf.map_definitions().unwrap(),
            [MapDefinition {
                name: "PORTS".into(),
                map_type: 1,
                max_entries: 1024,
                key_type: u32_,
                value_type: u32_,
                inner: None,
            }]
        );
    }

    #[test]
    fn damaged_blobs_are_errors_not_panics() {
        let (_, _, _) = two_layouts();
        let mut b = BtfBuilder::new();
        b.int("u8", 1);
        let blob = b.finish();
        for cut in 0..blob.len() {
            let _ = Btf::parse(&blob[..cut]);
        }
        let mut wrong = blob.clone();
        wrong[0] = 0;
        assert!(Btf::parse(&wrong).is_err());
        let btf = Btf::parse(&blob).unwrap();
        assert!(btf.layout(99).is_err());
    }
}
