//! The EC2-compatible tree (`/`, `/<version>/...`, `/ec2/...`), built and
//! rendered as nova's `base.py` does: `get_ec2_metadata` decides which keys
//! exist for a version, `find_path_in_tree` walks the request path,
//! `ec2_md_print` turns what it finds into text.
use std::{borrow::Cow, collections::BTreeMap};

use bytes::Bytes;

use super::{
    paths::{EC2_VERSIONS, Ec2Version},
    response::{ApiError, Document},
    view::InstanceView,
};

/// A value in the meta-data tree, as nova's dicts, lists and strings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    /// A dict. `label` is nova's `_name` entry: a dict that has one is listed
    /// in its parent by that label instead of `key/` (only `public-keys/N`).
    Dir {
        label: Option<String>,
        entries: BTreeMap<String, Node>,
    },
    List(Vec<String>),
    Text(String),
}

impl Node {
    fn dir(entries: BTreeMap<String, Node>) -> Self {
        Self::Dir {
            label: None,
            entries,
        }
    }

    fn text(value: impl Into<String>) -> Self {
        Self::Text(value.into())
    }

    /// `find_path_in_tree`: only dicts can be walked into. (nova fails with
    /// a 500 when a path goes through a string or list; we answer 404.)
    pub fn find(&self, path: &[String]) -> Option<Cow<'_, Node>> {
        let mut node = self;
        for (index, segment) in path.iter().enumerate() {
            match node {
                Node::Dir { label, entries } => {
                    if segment == "_name" {
                        // nova keeps the label as an ordinary dict key, so it
                        // can be fetched like one.
                        return match (label, index + 1 == path.len()) {
                            (Some(label), true) => Some(Cow::Owned(Node::text(label.clone()))),
                            _ => None,
                        };
                    }
                    node = entries.get(segment)?;
                }
                _ => return None,
            }
        }
        Some(Cow::Borrowed(node))
    }

    /// `ec2_md_print`: a dict lists its keys sorted, `/` after sub-dicts (or
    /// their label), one per line without a trailing newline; a list is its
    /// items one per line; scalars are themselves.
    pub fn render(&self) -> Bytes {
        match self {
            Node::Dir { entries, .. } => {
                let lines: Vec<String> = entries
                    .iter()
                    .map(|(key, child)| match child {
                        Node::Dir {
                            label: Some(label), ..
                        } => label.clone(),
                        Node::Dir { label: None, .. } => format!("{key}/"),
                        _ => key.clone(),
                    })
                    .collect();
                Bytes::from(lines.join("\n"))
            }
            Node::List(items) => Bytes::from(items.join("\n")),
            Node::Text(text) => Bytes::from(text.clone()),
        }
    }
}

/// What the EC2 segments after the optional `ec2` prefix name.
#[derive(Debug, PartialEq, Eq)]
pub enum Resource<'a> {
    /// `/`: the versions.
    Versions,
    /// `/<version>/`: `meta-data/`, and `user-data` when there is some.
    Version,
    /// `/<version>/dynamic/...`: the segments after `dynamic`.
    Dynamic(Ec2Version, &'a [String]),
    /// `/<version>/meta-data/...`: the path inside the meta-data tree.
    MetaData(Ec2Version, &'a [String]),
    UserData,
}

/// Resolves the segments. `get_ec2_metadata(version)` is {"meta-data":
/// {...}, "user-data": raw} (the latter only when present); each branch is
/// built only when the path goes there, so metadata reads never decode the
/// user data.
pub fn resolve(segments: &[String]) -> Result<Resource<'_>, ApiError> {
    let Some((version_name, rest)) = segments.split_first() else {
        return Ok(Resource::Versions);
    };
    let version = Ec2Version::parse(version_name).ok_or(ApiError::NotFound)?;
    match rest.split_first() {
        None => Ok(Resource::Version),
        Some((branch, path)) if branch == "dynamic" => Ok(Resource::Dynamic(version, path)),
        Some((branch, path)) if branch == "meta-data" => Ok(Resource::MetaData(version, path)),
        Some((branch, [])) if branch == "user-data" => Ok(Resource::UserData),
        _ => Err(ApiError::NotFound),
    }
}

/// `/<version>/`.
pub fn version_listing(view: &InstanceView<'_>) -> Document {
    let mut listing = String::from("meta-data/");
    if view.doc.user_data.is_some() {
        listing.push_str("\nuser-data");
    }
    Document::text(listing)
}

/// The node at `path` in a meta-data tree, rendered.
pub fn meta_data_node(tree: &Node, path: &[String]) -> Result<Document, ApiError> {
    let node = tree.find(path).ok_or(ApiError::NotFound)?;
    Ok(Document::text(node.render()))
}

/// `GET /`: every EC2 version, then `latest` (handler.py `__call__`).
pub fn versions_listing() -> String {
    let mut versions: Vec<&str> = EC2_VERSIONS.to_vec();
    versions.push("latest");
    versions.join("\n")
}

/// The meta-data dict, key by key in the version nova adds it.
pub fn meta_data(view: &InstanceView<'_>, version: Ec2Version) -> Node {
    let hostname = view.hostname();
    let mut md: BTreeMap<String, Node> = BTreeMap::new();
    let mut put = |key: &str, node: Node| {
        md.insert(key.to_owned(), node);
    };

    // Every version (1.0).
    put("ami-id", Node::text(view.ami_id()));
    put(
        "ami-launch-index",
        Node::text(view.launch_index().to_string()),
    );
    put("ami-manifest-path", Node::text("FIXME"));
    put("instance-id", Node::text(view.ec2_instance_id()));
    put("hostname", Node::text(hostname.clone()));
    put("local-ipv4", Node::text(view.local_ipv4().to_string()));
    put("reservation-id", Node::text(view.reservation_id()));
    put(
        "security-groups",
        Node::List(view.security_groups().to_vec()),
    );
    if !view.public_keys().is_empty() {
        put("public-keys", public_keys(view));
    }

    if version >= Ec2Version::V2007_01_19 {
        put("local-hostname", Node::text(hostname.clone()));
        put("public-hostname", Node::text(hostname));
        put("public-ipv4", Node::text(view.public_ipv4()));
    }
    if version >= Ec2Version::V2007_08_29 {
        put("instance-type", Node::text(view.instance_type()));
    }
    if version >= Ec2Version::V2007_12_15 {
        let mappings = view
            .block_device_mapping()
            .into_iter()
            .map(|(name, device)| (name, Node::Text(device)))
            .collect();
        put("block-device-mapping", Node::dir(mappings));
        if let Some(kernel_id) = view.kernel_id() {
            put("kernel-id", Node::text(kernel_id));
        }
        if let Some(ramdisk_id) = view.ramdisk_id() {
            put("ramdisk-id", Node::text(ramdisk_id));
        }
    }
    if version >= Ec2Version::V2008_02_01 {
        let placement = BTreeMap::from([(
            "availability-zone".to_owned(),
            Node::text(view.availability_zone()),
        )]);
        put("placement", Node::dir(placement));
    }
    if version >= Ec2Version::V2008_09_01 {
        put("instance-action", Node::text("none"));
    }
    Node::dir(md)
}

/// `public-keys/` lists `N=<name>`; `public-keys/N/` lists `openssh-key`.
/// nova has one keypair at index 0; further keys get 1, 2, ... in name order.
fn public_keys(view: &InstanceView<'_>) -> Node {
    let keys = view
        .public_keys()
        .iter()
        .enumerate()
        .map(|(index, (name, key))| {
            let entry = Node::Dir {
                label: Some(format!("{index}={name}")),
                entries: BTreeMap::from([("openssh-key".to_owned(), Node::text(key.clone()))]),
            };
            (index.to_string(), entry)
        })
        .collect();
    Node::dir(keys)
}
