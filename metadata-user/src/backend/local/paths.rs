//! Request paths: nova's normalisation and the version tables of both trees.
//!
//! nova (`handler.py` `__call__`, `base.py` `InstanceMetadata.lookup`) runs
//! the URL-decoded path through `posixpath.normpath`, then treats any first
//! segment other than `openstack` or `ec2` as EC2 (`/latest/x` is
//! `/ec2/latest/x`). We do the same, except that a leading `//` is collapsed
//! like any other (POSIX `normpath` keeps exactly two leading slashes, which
//! makes nova answer `//anything` with the EC2 version list; no client relies
//! on that).

use std::borrow::Cow;

/// EC2 versions as nova lists them (`base.py` `VERSIONS`); `latest` is the last.
pub const EC2_VERSIONS: [&str; 9] = [
    "1.0",
    "2007-01-19",
    "2007-03-01",
    "2007-08-29",
    "2007-10-10",
    "2007-12-15",
    "2008-02-01",
    "2008-09-01",
    "2009-04-04",
];

/// OpenStack versions (`base.py` `OPENSTACK_VERSIONS`); `latest` is the last.
pub const OPENSTACK_VERSIONS: [&str; 10] = [
    "2012-08-10",
    "2013-04-04",
    "2013-10-17",
    "2015-10-15",
    "2016-06-30",
    "2016-10-06",
    "2017-02-22",
    "2018-08-27",
    "2020-10-14",
    "2025-04-04",
];

/// An EC2 metadata version, ordered like nova's `_check_version` (by its index
/// in [`EC2_VERSIONS`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ec2Version(usize);

impl Ec2Version {
    pub const V2007_01_19: Self = Self(1);
    pub const V2007_08_29: Self = Self(3);
    pub const V2007_12_15: Self = Self(5);
    pub const V2008_02_01: Self = Self(6);
    pub const V2008_09_01: Self = Self(7);
    pub const V2009_04_04: Self = Self(8);

    /// `latest` is the newest version; anything else must be listed.
    pub fn parse(name: &str) -> Option<Self> {
        if name == "latest" {
            return Some(Self(EC2_VERSIONS.len() - 1));
        }
        EC2_VERSIONS.iter().position(|v| *v == name).map(Self)
    }

    /// Its place in [`EC2_VERSIONS`].
    pub fn index(self) -> usize {
        self.0
    }
}

/// An OpenStack metadata version, named after the release that added it
/// (nova's `GRIZZLY`, ... constants; the first, FOLSOM, gates nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct OpenStackVersion(usize);

impl OpenStackVersion {
    pub const GRIZZLY: Self = Self(1);
    pub const HAVANA: Self = Self(2);
    pub const LIBERTY: Self = Self(3);
    pub const NEWTON_ONE: Self = Self(4);
    pub const NEWTON_TWO: Self = Self(5);
    pub const OCATA: Self = Self(6);
    pub const ROCKY: Self = Self(7);
    pub const VICTORIA: Self = Self(8);
    pub const EPOXY: Self = Self(9);

    pub fn parse(name: &str) -> Option<Self> {
        if name == "latest" {
            return Some(Self(OPENSTACK_VERSIONS.len() - 1));
        }
        OPENSTACK_VERSIONS.iter().position(|v| *v == name).map(Self)
    }

    /// Its place in [`OPENSTACK_VERSIONS`].
    pub fn index(self) -> usize {
        self.0
    }
}

/// Which tree a normalised path addresses. Segments after the tree name are
/// kept as they are; the tree modules resolve them (and answer 404).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/`, `/ec2`, or `/ec2/<anything>`: segments after `ec2` (may be empty).
    Ec2(Vec<String>),
    /// `/openstack` or `/openstack/<anything>`: segments after `openstack`.
    OpenStack(Vec<String>),
}

impl Route {
    /// Routes a raw request path (as in the request line, without the query).
    pub fn from_request_path(raw: &str) -> Self {
        let decoded = percent_decode(raw);
        let segments = normalise(&decoded);
        // Only the segments the tree modules get are copied out.
        let owned = |segments: &[&str]| segments.iter().map(|s| (*s).to_owned()).collect();
        match segments.first().copied() {
            Some("openstack") => Self::OpenStack(owned(&segments[1..])),
            Some("ec2") => Self::Ec2(owned(&segments[1..])),
            _ => Self::Ec2(owned(&segments)),
        }
    }
}

/// `posixpath.normpath` on an absolute path, returned as its segments: empty
/// and `.` segments vanish, `..` drops the previous one (never above `/`).
fn normalise(path: &str) -> Vec<&str> {
    let mut segments = Vec::with_capacity(4);
    for segment in segments_of(path) {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    segments
}

/// `path.split('/')`, byte by byte: the same segments (empty ones
/// included), without the per-segment call and memchr that `str::split`
/// makes. Every path is split two or three times per request (its kind,
/// its route), and those calls were about 5% of a request's instructions
/// (callgrind). Slicing at an ASCII `/` always leaves valid UTF-8.
pub(crate) fn segments_of(path: &str) -> impl Iterator<Item = &str> {
    let bytes = path.as_bytes();
    let mut start = 0;
    (0..=bytes.len()).filter_map(move |end| {
        if end < bytes.len() && bytes[end] != b'/' {
            return None;
        }
        let segment = &path[start..end];
        start = end + 1;
        Some(segment)
    })
}

/// URL-decodes `%XX` escapes the way WSGI's PATH_INFO arrives at nova;
/// malformed escapes stay literal, invalid UTF-8 becomes U+FFFD (and so never
/// matches a known path). A path without escapes (nearly every one) is
/// borrowed as it is.
fn percent_decode(raw: &str) -> Cow<'_, str> {
    if !raw.contains('%') {
        return Cow::Borrowed(raw);
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).and_then(|b| hex_value(*b)),
                bytes.get(i + 2).and_then(|b| hex_value(*b)),
            )
        {
            out.push(hi << 4 | lo);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    match String::from_utf8(out) {
        Ok(text) => Cow::Owned(text),
        Err(err) => Cow::Owned(String::from_utf8_lossy(err.as_bytes()).into_owned()),
    }
}

fn hex_value(byte: u8) -> Option<u8> {
    (byte as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ec2(segments: &[&str]) -> Route {
        Route::Ec2(segments.iter().map(|s| s.to_string()).collect())
    }

    fn openstack(segments: &[&str]) -> Route {
        Route::OpenStack(segments.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn segments_are_those_of_str_split() {
        for path in [
            "",
            "/",
            "//",
            "/a",
            "a/b",
            "/latest/meta-data/",
            "/é/ü//x/",
            "a//",
        ] {
            let ours: Vec<&str> = segments_of(path).collect();
            let std: Vec<&str> = path.split('/').collect();
            assert_eq!(ours, std, "{path:?}");
        }
    }

    #[test]
    fn normalises_like_posix_normpath() {
        assert_eq!(Route::from_request_path("/"), ec2(&[]));
        assert_eq!(Route::from_request_path(""), ec2(&[]));
        assert_eq!(
            Route::from_request_path("/latest/meta-data/"),
            ec2(&["latest", "meta-data"])
        );
        assert_eq!(
            Route::from_request_path("/latest//meta-data/./hostname/"),
            ec2(&["latest", "meta-data", "hostname"])
        );
        assert_eq!(
            Route::from_request_path("/openstack/../latest/meta-data"),
            ec2(&["latest", "meta-data"])
        );
        assert_eq!(Route::from_request_path("/../../"), ec2(&[]));
        assert_eq!(
            Route::from_request_path("//openstack///latest/meta_data.json"),
            openstack(&["latest", "meta_data.json"])
        );
    }

    #[test]
    fn first_segment_picks_the_tree() {
        assert_eq!(Route::from_request_path("/ec2"), ec2(&[]));
        assert_eq!(
            Route::from_request_path("/ec2/latest/user-data"),
            ec2(&["latest", "user-data"])
        );
        assert_eq!(
            Route::from_request_path("/latest/user-data"),
            ec2(&["latest", "user-data"])
        );
        assert_eq!(Route::from_request_path("/openstack/"), openstack(&[]));
        // Only the first segment counts: this is EC2 path "foo/openstack".
        assert_eq!(
            Route::from_request_path("/foo/openstack"),
            ec2(&["foo", "openstack"])
        );
    }

    #[test]
    fn percent_escapes_are_decoded_before_routing() {
        assert_eq!(
            Route::from_request_path("/latest/meta%2Ddata/host%6eame"),
            ec2(&["latest", "meta-data", "hostname"])
        );
        assert_eq!(
            Route::from_request_path("/latest/%zz%4"),
            ec2(&["latest", "%zz%4"])
        );
        // An encoded slash separates segments, as it does once WSGI decoded it.
        assert_eq!(
            Route::from_request_path("/openstack%2Flatest"),
            openstack(&["latest"])
        );
        // Invalid UTF-8 once decoded: U+FFFD, which names no file.
        assert_eq!(
            Route::from_request_path("/latest/%ff"),
            ec2(&["latest", "\u{fffd}"])
        );
    }

    #[test]
    fn versions_parse_and_order() {
        assert_eq!(Ec2Version::parse("latest"), Some(Ec2Version::V2009_04_04));
        assert_eq!(Ec2Version::parse("1.0"), Some(Ec2Version(0)));
        assert_eq!(Ec2Version::parse("2009-04-05"), None);
        assert!(Ec2Version::parse("2007-03-01").unwrap() < Ec2Version::V2007_08_29);
        assert_eq!(
            OpenStackVersion::parse("latest"),
            Some(OpenStackVersion::EPOXY)
        );
        assert_eq!(
            OpenStackVersion::parse("2013-04-04"),
            Some(OpenStackVersion::GRIZZLY)
        );
        assert_eq!(OpenStackVersion::parse("2013-04-05"), None);
    }
}
