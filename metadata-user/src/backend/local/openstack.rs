//! The OpenStack tree (`/openstack/...`), as nova's `base.py`
//! `InstanceMetadata` and its `RouteConfiguration` serve it.
use std::time::SystemTime;

use bytes::Bytes;
use serde_json::{Map, Value};

use super::{
    paths::{OPENSTACK_VERSIONS, OpenStackVersion},
    pyjson,
    rendered::{Rendered, RenderedBody},
    response::{APPLICATION_JSON, ApiError, Document},
    view::InstanceView,
};

/// What an OpenStack path names, before the method is considered.
#[derive(Debug, PartialEq, Eq)]
pub enum Resource {
    /// `GET /openstack`: the version list, which depends on today's date.
    Versions,
    /// A file of one version, the same for every request until the
    /// instance document or the port changes (so it can be kept).
    File(OpenStackVersion, File),
    /// `password` (GRIZZLY and later): GET reads, POST sets once.
    Password,
}

/// The files of a version (`RouteConfiguration`'s handlers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum File {
    /// `/openstack/<version>/`: the listing.
    Listing,
    MetaData,
    UserData,
    VendorData,
    VendorData2,
    NetworkData,
}

impl File {
    pub const COUNT: usize = 6;

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Resolves the segments after `openstack` (nova's
/// `RouteConfiguration._version` and `handle_path`).
pub fn resolve(segments: &[String]) -> Result<Resource, ApiError> {
    let Some((version_name, rest)) = segments.split_first() else {
        return Ok(Resource::Versions);
    };
    let version = OpenStackVersion::parse(version_name).ok_or(ApiError::NotFound)?;
    // No further segment means the listing; otherwise the rest must name a
    // handler exactly.
    let file = match rest {
        [] => File::Listing,
        [name] => match name.as_str() {
            "version" => File::Listing,
            "meta_data.json" => File::MetaData,
            "user_data" => File::UserData,
            "password" if version >= OpenStackVersion::GRIZZLY => return Ok(Resource::Password),
            "vendor_data.json" if version >= OpenStackVersion::HAVANA => File::VendorData,
            "vendor_data2.json" if version >= OpenStackVersion::NEWTON_TWO => File::VendorData2,
            // `_network_data` has no version check: listed from LIBERTY on,
            // but served at every version.
            "network_data.json" => File::NetworkData,
            _ => return Err(ApiError::NotFound),
        },
        _ => return Err(ApiError::NotFound),
    };
    Ok(Resource::File(version, file))
}

/// `GET /openstack`.
pub fn versions(now: SystemTime) -> Document {
    Document::text(versions_listing(now))
}

/// Renders `file` of `version`; `user_data` is the instance's decoded user
/// data. meta_data.json is rendered around its random seed, which every
/// answer gets anew.
pub fn render(
    view: &InstanceView<'_>,
    version: OpenStackVersion,
    file: File,
    user_data: Option<&Bytes>,
) -> Result<Rendered, ApiError> {
    Ok(match file {
        File::Listing => Rendered::text(version_listing(view, version)),
        File::MetaData => meta_data_json(view, version),
        File::UserData => Rendered::text(user_data.ok_or(ApiError::NotFound)?.clone()),
        File::VendorData => Rendered::json(pyjson::dumps(vendor_data(view))),
        File::VendorData2 => {
            // Only the StaticJSON provider: {"static": <vendor_data.json>}.
            let mut object = pyjson::Object::new();
            object.insert("static", Value::Object(vendor_data(view).clone()));
            Rendered::json(pyjson::dumps(&object))
        }
        // nova never sets a mimetype for network_data.json (unlike
        // meta_data.json and vendor_data*.json), so webob's text/plain it is.
        File::NetworkData => Rendered::text(pyjson::dumps(
            view.doc.network_data.as_ref().unwrap_or(&Map::new()),
        )),
    })
}

/// `GET /openstack`: versions not in the future (by UTC date), then `latest`.
fn versions_listing(now: SystemTime) -> String {
    let today = utc_date(now);
    let mut versions: Vec<&str> = OPENSTACK_VERSIONS
        .iter()
        .copied()
        .filter(|version| *version <= today.as_str())
        .collect();
    versions.push("latest");
    versions.join("\n")
}

/// `_handle_version`: what `/openstack/<version>/` lists.
fn version_listing(view: &InstanceView<'_>, version: OpenStackVersion) -> String {
    let mut files = vec!["meta_data.json"];
    if view.doc.user_data.is_some() {
        files.push("user_data");
    }
    if version >= OpenStackVersion::GRIZZLY {
        files.push("password");
    }
    if version >= OpenStackVersion::HAVANA {
        files.push("vendor_data.json");
    }
    if version >= OpenStackVersion::LIBERTY {
        files.push("network_data.json");
    }
    if version >= OpenStackVersion::NEWTON_TWO {
        files.push("vendor_data2.json");
    }
    files.join("\n")
}

/// The StaticJSON vendor data; `{}` when the document has none.
fn vendor_data<'a>(view: &'a InstanceView<'_>) -> &'a Map<String, Value> {
    static EMPTY: std::sync::LazyLock<Map<String, Value>> = std::sync::LazyLock::new(Map::new);
    view.doc.vendor_data.as_ref().unwrap_or(&EMPTY)
}

/// `_metadata_as_json`, keys in nova's insertion order. (`files`,
/// `admin_pass` and `network_config` only exist on config drives.) From
/// GRIZZLY on it holds `random_seed`, new in every answer: rendered around
/// it, the rest is kept and the seed filled in per request.
fn meta_data_json(view: &InstanceView<'_>, version: OpenStackVersion) -> Rendered {
    let doc = view.doc;
    let mut md = pyjson::Object::new();
    md.insert("uuid", doc.uuid.hyphenated().to_string());
    if !doc.meta.is_empty() {
        md.insert("meta", Value::Object(string_map(&doc.meta)));
    }
    let keys = view.public_keys();
    if !keys.is_empty() {
        md.insert("public_keys", Value::Object(string_map(keys)));
        let entries = keys
            .iter()
            .map(|(name, key)| {
                let mut entry = pyjson::Object::new();
                entry.insert("name", name.clone());
                entry.insert("type", "ssh");
                entry.insert("data", key.clone());
                entry
            })
            .collect();
        md.insert_objects("keys", entries);
    }
    md.insert("hostname", view.hostname());
    md.insert("name", doc.name.clone());
    md.insert("launch_index", view.launch_index());
    md.insert("availability_zone", view.availability_zone());
    if version < OpenStackVersion::GRIZZLY {
        return Rendered::json(pyjson::dumps(&md));
    }
    // What follows random_seed.
    let mut rest = pyjson::Object::new();
    if version >= OpenStackVersion::LIBERTY {
        rest.insert(
            "project_id",
            view.project_id().map_or(Value::Null, Value::from),
        );
    }
    if version >= OpenStackVersion::NEWTON_ONE {
        rest.insert_objects("devices", devices(view, version));
    }
    if version >= OpenStackVersion::VICTORIA {
        let mut cpus = doc.dedicated_cpus.clone().unwrap_or_default();
        cpus.sort_unstable();
        rest.insert("dedicated_cpus", cpus);
    }
    let (prefix, suffix) = pyjson::dumps_around_string(&md, "random_seed", &rest);
    Rendered::new(
        RenderedBody::AroundSeed {
            prefix: prefix.into(),
            suffix: suffix.into(),
        },
        APPLICATION_JSON,
    )
}

/// `_get_device_metadata`: the document stores devices as nova renders them
/// at the newest version; older versions lose what they did not have yet.
fn devices(view: &InstanceView<'_>, version: OpenStackVersion) -> Vec<pyjson::Object> {
    let mut out = Vec::new();
    for device in view.doc.devices.iter().flatten() {
        let Value::Object(device) = device else {
            continue;
        };
        let mut device = device.clone();
        match device.get("type").and_then(Value::as_str) {
            Some("nic") => {
                if version < OpenStackVersion::OCATA {
                    device.remove("vlan");
                }
                if version < OpenStackVersion::ROCKY {
                    device.remove("vf_trusted");
                }
                // A NIC with neither tags, vlan nor vf_trusted is not shown.
                if !["tags", "vlan", "vf_trusted"]
                    .iter()
                    .any(|key| device.contains_key(*key))
                {
                    continue;
                }
            }
            Some("share") if version < OpenStackVersion::EPOXY => continue,
            _ => {}
        }
        out.push(device_in_nova_order(&device));
    }
    out
}

/// nova builds each device dict in this order; keys it does not know come
/// last, sorted.
fn device_in_nova_order(device: &Map<String, Value>) -> pyjson::Object {
    const ORDER: [&str; 11] = [
        "vlan",
        "vf_trusted",
        "type",
        "mac",
        "serial",
        "path",
        "share_id",
        "tag",
        "bus",
        "address",
        "tags",
    ];
    let mut object = pyjson::Object::new();
    for key in ORDER {
        if let Some(value) = device.get(key) {
            object.insert(key, value.clone());
        }
    }
    for (key, value) in device {
        if !ORDER.contains(&key.as_str()) {
            object.insert(key.clone(), value.clone());
        }
    }
    object
}

fn string_map(map: &std::collections::BTreeMap<String, String>) -> Map<String, Value> {
    map.iter()
        .map(|(key, value)| (key.clone(), Value::String(value.clone())))
        .collect()
}

/// `YYYY-MM-DD` of `now` in UTC (nova compares version names with it).
fn utc_date(now: SystemTime) -> String {
    let seconds = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (year, month, day) = civil_from_days((seconds / 86_400) as i64);
    format!("{year:04}-{month:02}-{day:02}")
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn utc_dates() {
        let at = |secs| utc_date(SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01");
        assert_eq!(at(951_782_400), "2000-02-29");
        assert_eq!(at(1_743_724_800), "2025-04-04");
        assert_eq!(at(1_743_724_799), "2025-04-03");
    }

    #[test]
    fn future_versions_are_hidden_from_the_listing() {
        let day_before_epoxy = SystemTime::UNIX_EPOCH + Duration::from_secs(1_743_724_799);
        let listing = versions_listing(day_before_epoxy);
        assert!(listing.ends_with("2020-10-14\nlatest"), "{listing}");
        let epoxy = SystemTime::UNIX_EPOCH + Duration::from_secs(1_743_724_800);
        assert!(versions_listing(epoxy).ends_with("2025-04-04\nlatest"));
    }
}
