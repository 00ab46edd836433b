//! What a request path asks for, as the operator counts and audits it: the
//! tree (a metrics label) and whether it reaches one of the guest's secrets.
//! The path is read the way the local backend routes it (percent-decoded,
//! `.`, `..` and `//` resolved), so an encoded or roundabout spelling of
//! `user_data` is audited like the plain one. Either backend: nova sees the
//! same paths.
use super::local::paths::Route;
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
    /// Classifies a raw request path (without the query).
    pub fn of(raw_path: &str) -> Self {
        match Route::from_request_path(raw_path) {
            Route::OpenStack(segments) => Self {
                tree: Tree::OpenStack,
                secret: match segments.as_slice() {
                    [_, leaf] if leaf == "user_data" => Some(Secret::UserData),
                    [_, leaf] if leaf == "password" => Some(Secret::Password),
                    _ => None,
                },
            },
            Route::Ec2(segments) => match segments.as_slice() {
                [version, api, token]
                    if version == "latest" && api == "api" && token == "token" =>
                {
                    Self {
                        tree: Tree::Token,
                        secret: Some(Secret::Token),
                    }
                }
                [_, leaf] if leaf == "user-data" => Self {
                    tree: Tree::Ec2,
                    secret: Some(Secret::UserData),
                },
                _ => Self {
                    tree: Tree::Ec2,
                    secret: None,
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(path: &str) -> (Tree, Option<Secret>) {
        let kind = PathKind::of(path);
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
    }
}
