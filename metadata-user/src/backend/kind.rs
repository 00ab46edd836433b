//! What a request path asks for, as the operator counts and audits it: the
//! tree (a metrics label) and whether it reaches one of the guest's secrets.
//! The path is read the way the local backend routes it (percent-decoded,
//! `.`, `..` and `//` resolved), so an encoded or roundabout spelling of
//! `user_data` is audited like the plain one. Either backend: nova sees the
//! same paths.
use super::local::paths::{Route, segments_of};
use crate::metrics::Tree;

/// A guest secret whose every access leaves an audit record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Secret {
    /// `/openstack/<version>/user_data` or `/<version>/user-data`.
    UserData,
    /// `/openstack/<version>/password`, read (GET) or set (POST).
    Password,
    /// `/latest/api/token`: an IMDSv2 token.
    Token,
}

impl Secret {
    pub fn as_str(self) -> &'static str {
        match self {
            Secret::UserData => "user_data",
            Secret::Password => "password",
            Secret::Token => "token",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathKind {
    pub tree: Tree,
    pub secret: Option<Secret>,
}

impl PathKind {
    /// Classifies a raw request path (without the query). Plain paths, all
    /// a well-behaved client sends, are read in place; one with a `%`, a `.`
    /// segment or `//` goes through the backend's full normalisation.
    pub fn of(raw_path: &str) -> Self {
        match plain_segments(raw_path) {
            Some((segments, count)) => Self::of_segments(&segments[..count]),
            None => Self::of_route(Route::from_request_path(raw_path)),
        }
    }

    /// The first segment picks the tree as in [`Route`]: `openstack`, else EC2
    /// (an `ec2` prefix is dropped).
    fn of_segments(segments: &[&str]) -> Self {
        match segments {
            ["openstack", rest @ ..] => Self::openstack(rest),
            ["ec2", rest @ ..] => Self::ec2(rest),
            rest => Self::ec2(rest),
        }
    }

    fn of_route(route: Route) -> Self {
        match route {
            Route::OpenStack(segments) => {
                Self::openstack(&segments.iter().map(String::as_str).collect::<Vec<_>>())
            }
            Route::Ec2(segments) => {
                Self::ec2(&segments.iter().map(String::as_str).collect::<Vec<_>>())
            }
        }
    }

    fn openstack(segments: &[&str]) -> Self {
        Self {
            tree: Tree::OpenStack,
            secret: match segments {
                [_, "user_data"] => Some(Secret::UserData),
                [_, "password"] => Some(Secret::Password),
                _ => None,
            },
        }
    }

    fn ec2(segments: &[&str]) -> Self {
        match segments {
            ["latest", "api", "token"] => Self {
                tree: Tree::Token,
                secret: Some(Secret::Token),
            },
            [_, "user-data"] => Self {
                tree: Tree::Ec2,
                secret: Some(Secret::UserData),
            },
            _ => Self {
                tree: Tree::Ec2,
                secret: None,
            },
        }
    }
}

/// The most segments a classification looks at (`ec2/latest/api/token`);
/// a longer path is neither a secret nor a token, whatever its tail.
const MAX_SEGMENTS: usize = 4;

/// The segments of a path that needs no normalisation, without allocating;
/// None when it needs it (percent-encoding, `.` or `..`, an empty segment
/// other than a trailing slash).
fn plain_segments(raw: &str) -> Option<([&str; MAX_SEGMENTS + 1], usize)> {
    if raw.contains('%') {
        return None;
    }
    let mut segments = [""; MAX_SEGMENTS + 1];
    let mut count = 0;
    let path = raw.strip_prefix('/').unwrap_or(raw);
    let path = path.strip_suffix('/').unwrap_or(path);
    if path.is_empty() {
        return Some((segments, 0));
    }
    for segment in segments_of(path) {
        if segment.is_empty() || segment == "." || segment == ".." {
            return None;
        }
        // Past the slots the path is too long to matter (the extra slot
        // says "longer"), but every segment is still checked: a `..` further
        // on could bring it back to a secret.
        if count < segments.len() {
            segments[count] = segment;
            count += 1;
        }
    }
    Some((segments, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both ways agree: the allocation-free reading of plain paths and the
    /// backend's full normalisation.
    fn kind(path: &str) -> (Tree, Option<Secret>) {
        let kind = PathKind::of(path);
        let normalised = PathKind::of_route(Route::from_request_path(path));
        assert_eq!(kind, normalised, "{path}");
        (kind.tree, kind.secret)
    }

    #[test]
    fn trees_and_secrets_however_the_path_is_spelt() {
        use Secret::*;
        use Tree::*;
        assert_eq!(kind("/openstack/latest/meta_data.json"), (OpenStack, None));
        assert_eq!(
            kind("/openstack/latest/user_data"),
            (OpenStack, Some(UserData))
        );
        assert_eq!(
            kind("/openstack/2013-04-04/password"),
            (OpenStack, Some(Password))
        );
        assert_eq!(
            kind("//openstack/./latest/../latest/user%5Fdata"),
            (OpenStack, Some(UserData))
        );
        assert_eq!(kind("/latest/user-data"), (Ec2, Some(UserData)));
        assert_eq!(kind("/ec2/2009-04-04/user-data/"), (Ec2, Some(UserData)));
        assert_eq!(kind("/latest/meta-data/hostname"), (Ec2, None));
        assert_eq!(kind("/"), (Ec2, None));
        assert_eq!(
            kind("/latest/api/token"),
            (Tree::Token, Some(Secret::Token))
        );
        assert_eq!(
            kind("/ec2/latest/api/token"),
            (Tree::Token, Some(Secret::Token))
        );
        assert_eq!(kind("/latest/api/token/x"), (Ec2, None));
        assert_eq!(kind("/openstack"), (OpenStack, None));
        assert_eq!(kind("/ec2"), (Ec2, None));
        assert_eq!(
            kind("/openstack/latest/user_data/"),
            (OpenStack, Some(UserData))
        );
        assert_eq!(
            kind("/openstack/latest/a/b/c/d/../../../../user_data"),
            (OpenStack, Some(UserData))
        );
        assert_eq!(kind("/a/b/c/d/e/f/g"), (Ec2, None));
        assert_eq!(kind("/latest/./user-data"), (Ec2, Some(UserData)));
        assert!(plain_segments("/openstack/latest/meta_data.json").is_some());
        assert!(plain_segments("/openstack/latest/../x").is_none());
    }
}
