//! What a running domain's XML (`virDomainGetXMLDesc`) tells discovery: its
//! identity, its taps, nova's `<nova:instance>` metadata and the instance
//! document a plain libvirt host may keep in the domain's own metadata.
//!
//! Elements are matched by namespace URI, never by prefix: nova writes
//! `nova:`, but any prefix bound to the same URI is the same element.
use std::net::Ipv4Addr;

use roxmltree::{Document, Node};
use uuid::Uuid;

use crate::discovery::{DiscoveredPort, DomainPorts};

/// nova's metadata namespace since it lists the ports (`nova:ports`).
pub const NOVA_NS_1_1: &str = "http://openstack.org/xmlns/libvirt/nova/1.1";
/// What older nova writes: the same `nova:instance`, without `nova:ports`.
pub const NOVA_NS_1_0: &str = "http://openstack.org/xmlns/libvirt/nova/1.0";

/// The namespace of the instance document a domain carries for the local
/// backend: `virsh metadata DOMAIN --uri DOCUMENT_NS --key DOCUMENT_KEY
/// --set '<instance>{...}</instance>'`.
pub const DOCUMENT_NS: &str = "urn:metadata-redirector:instance:1";
/// The prefix the README's commands bind (any prefix works when reading).
pub const DOCUMENT_KEY: &str = "mdr";
/// The element under [`DOCUMENT_NS`] whose text is the JSON document.
pub const DOCUMENT_ELEMENT: &str = "instance";

/// nova names a port's tap `tap` + the port id, cut to 14 bytes
/// (nova.network.model.NIC_NAME_LEN).
const NOVA_TAP_NAME_LEN: usize = 14;

/// Interface types whose `<target dev>` is a tap on this host. A macvtap
/// (`direct`), a vhost-user socket or a host device has no tap for the
/// datapath to sit on.
const TAP_INTERFACE_TYPES: [&str; 3] = ["bridge", "network", "ethernet"];

/// One domain as its XML describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct DomainDesc {
    pub uuid: Uuid,
    pub name: String,
    /// The XML carries an `id`: the domain is running (or starting).
    pub active: bool,
    pub nova: Option<NovaInstance>,
    /// The text of our document element, as written (not yet checked).
    pub document: Option<String>,
    /// Interfaces with a tap, in the XML's order.
    pub interfaces: Vec<TapInterface>,
}

/// `<nova:instance>`.
#[derive(Clone, Debug, PartialEq)]
pub struct NovaInstance {
    /// [`NOVA_NS_1_1`] or [`NOVA_NS_1_0`].
    pub namespace: &'static str,
    /// `<nova:name>`: the instance's display name.
    pub name: Option<String>,
    /// `<nova:owner><nova:project uuid=...>`: what nova sends as X-Tenant-ID.
    pub project_id: Option<String>,
    /// `<nova:ports>` (1.1 only).
    pub ports: Vec<NovaPort>,
}

/// `<nova:port uuid=...>` with its fixed IPv4 addresses.
#[derive(Clone, Debug, PartialEq)]
pub struct NovaPort {
    pub id: Uuid,
    pub fixed_ips: Vec<Ipv4Addr>,
}

/// `<interface>` with a `<target dev=.../>` on a tap.
#[derive(Clone, Debug, PartialEq)]
pub struct TapInterface {
    pub ifname: String,
    /// Lower-case, as libvirt writes it.
    pub mac: Option<String>,
}

impl DomainDesc {
    /// Parses `xml`; an error names what is wrong (the caller adds the
    /// domain's name).
    pub fn parse(xml: &str) -> Result<DomainDesc, String> {
        let doc = Document::parse(xml).map_err(|err| format!("domain XML: {err}"))?;
        let root = doc.root_element();
        if root.tag_name().name() != "domain" || root.tag_name().namespace().is_some() {
            return Err(format!(
                "domain XML: the root element is <{}>, not <domain>",
                root.tag_name().name()
            ));
        }
        let text_of = |name: &str| -> Result<String, String> {
            let node =
                only_child(root, None, name)?.ok_or_else(|| format!("domain XML: no <{name}>"))?;
            Ok(node.text().unwrap_or_default().trim().to_owned())
        };
        let uuid_text = text_of("uuid")?;
        let uuid = Uuid::parse_str(&uuid_text)
            .map_err(|err| format!("domain XML: <uuid> {uuid_text:?}: {err}"))?;
        let name = text_of("name")?;
        let active = root.attribute("id").is_some_and(|id| id != "-1");

        let metadata = only_child(root, None, "metadata")?;
        let (nova, document) = match metadata {
            Some(metadata) => (nova_instance(metadata)?, document_text(metadata)?),
            None => (None, None),
        };
        let interfaces = match only_child(root, None, "devices")? {
            Some(devices) => tap_interfaces(devices)?,
            None => Vec::new(),
        };
        Ok(DomainDesc {
            uuid,
            name,
            active,
            nova,
            document,
            interfaces,
        })
    }

    /// The ports discovery wants for this domain: one per tap, bound to the
    /// domain's UUID, with nova's port id and fixed IPs where nova lists
    /// the port for that tap.
    pub fn ports(&self) -> DomainPorts {
        let nova_ports: &[NovaPort] = self.nova.as_ref().map_or(&[], |nova| &nova.ports);
        let ports = self
            .interfaces
            .iter()
            .map(|interface| {
                let nova_port = nova_ports
                    .iter()
                    .find(|port| nova_tap_name(&port.id) == interface.ifname)
                    // A tap named otherwise (a libvirt-chosen vnetN) is
                    // still unambiguous when there is one of each.
                    .or(match (nova_ports, self.interfaces.len()) {
                        ([only], 1) => Some(only),
                        _ => None,
                    });
                DiscoveredPort {
                    ifname: interface.ifname.clone(),
                    mac: interface.mac.clone(),
                    port_id: nova_port.map(|port| port.id),
                    ips: nova_port
                        .map(|port| port.fixed_ips.clone())
                        .unwrap_or_default(),
                }
            })
            .collect();
        DomainPorts {
            uuid: self.uuid,
            name: self.name.clone(),
            instance_name: self.nova.as_ref().and_then(|nova| nova.name.clone()),
            project_id: self.nova.as_ref().and_then(|nova| nova.project_id.clone()),
            document: self.document.clone(),
            ports,
        }
    }
}

/// The tap nova creates for a port: `tap` + its id, 14 bytes in all.
pub fn nova_tap_name(port_id: &Uuid) -> String {
    let mut name = format!("tap{port_id}");
    name.truncate(NOVA_TAP_NAME_LEN);
    name
}

/// The one child of `parent` called `name` in `namespace`, if any; two are
/// an error (which one would be meant?).
fn only_child<'a, 'i>(
    parent: Node<'a, 'i>,
    namespace: Option<&str>,
    name: &str,
) -> Result<Option<Node<'a, 'i>>, String> {
    let mut found = parent.children().filter(|node| is(node, namespace, name));
    let first = found.next();
    if first.is_some() && found.next().is_some() {
        return Err(format!(
            "more than one <{name}> in <{}>",
            parent.tag_name().name()
        ));
    }
    Ok(first)
}

/// Whether `node` is the element `name` in `namespace` (`None`: in no
/// namespace, as libvirt's own elements are).
fn is(node: &Node, namespace: Option<&str>, name: &str) -> bool {
    node.is_element() && node.tag_name().name() == name && node.tag_name().namespace() == namespace
}

fn nova_instance(metadata: Node) -> Result<Option<NovaInstance>, String> {
    let mut found = None;
    for namespace in [NOVA_NS_1_1, NOVA_NS_1_0] {
        if let Some(instance) = only_child(metadata, Some(namespace), "instance")? {
            if found.is_some() {
                return Err(
                    "nova metadata: <nova:instance> in both the 1.0 and 1.1 namespaces".into(),
                );
            }
            found = Some((namespace, instance));
        }
    }
    let Some((namespace, instance)) = found else {
        return Ok(None);
    };
    fn child<'a, 'i>(
        parent: Node<'a, 'i>,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Node<'a, 'i>>, String> {
        only_child(parent, Some(namespace), name).map_err(|err| format!("nova metadata: {err}"))
    }
    let name = child(instance, namespace, "name")?
        .map(|node| node.text().unwrap_or_default().trim().to_owned())
        .filter(|name| !name.is_empty());
    let project_id = match child(instance, namespace, "owner")? {
        Some(owner) => match child(owner, namespace, "project")? {
            Some(project) => {
                let id = project.attribute("uuid").unwrap_or_default().trim();
                if id.is_empty() || id.len() > 255 || id.chars().any(char::is_control) {
                    return Err(format!(
                        "nova metadata: <nova:project uuid={id:?}> is not a project id"
                    ));
                }
                Some(id.to_owned())
            }
            None => None,
        },
        None => None,
    };
    let mut ports = Vec::new();
    if let Some(list) = child(instance, namespace, "ports")? {
        for port in list
            .children()
            .filter(|node| is(node, Some(namespace), "port"))
        {
            let id_text = port.attribute("uuid").unwrap_or_default();
            let id = Uuid::parse_str(id_text).map_err(|err| {
                format!("nova metadata: <nova:port uuid={id_text:?}> is not a UUID ({err})")
            })?;
            let mut fixed_ips = Vec::new();
            for ip in port
                .children()
                .filter(|node| is(node, Some(namespace), "ip"))
            {
                let address = ip.attribute("address").unwrap_or_default();
                let version = ip.attribute("ipVersion").unwrap_or_default();
                if ip.attribute("type") != Some("fixed") || version == "6" {
                    continue; // floating IPs are not on the port; IPv6 is not served here
                }
                let parsed = address.parse::<Ipv4Addr>().map_err(|_| {
                    format!(
                        "nova metadata: port {id}: <nova:ip address={address:?} ipVersion={version:?}> \
                         is not an IPv4 address"
                    )
                })?;
                fixed_ips.push(parsed);
            }
            if ports.iter().any(|seen: &NovaPort| seen.id == id) {
                return Err(format!("nova metadata: port {id} is listed twice"));
            }
            ports.push(NovaPort { id, fixed_ips });
        }
    }
    Ok(Some(NovaInstance {
        namespace,
        name,
        project_id,
        ports,
    }))
}

fn document_text(metadata: Node) -> Result<Option<String>, String> {
    Ok(only_child(metadata, Some(DOCUMENT_NS), DOCUMENT_ELEMENT)
        .map_err(|err| format!("instance document: {err}"))?
        .map(|node| node.text().unwrap_or_default().to_owned()))
}

fn tap_interfaces(devices: Node) -> Result<Vec<TapInterface>, String> {
    let mut interfaces: Vec<TapInterface> = Vec::new();
    for interface in devices
        .children()
        .filter(|node| is(node, None, "interface"))
    {
        if !interface
            .attribute("type")
            .is_some_and(|kind| TAP_INTERFACE_TYPES.contains(&kind))
        {
            continue;
        }
        let Some(ifname) = only_child(interface, None, "target")?
            .and_then(|target| target.attribute("dev"))
            .map(str::to_owned)
            .filter(|dev| !dev.is_empty())
        else {
            continue; // not started yet, or started without a tap of its own
        };
        let mac = only_child(interface, None, "mac")?
            .and_then(|mac| mac.attribute("address"))
            .map(str::to_ascii_lowercase);
        if interfaces.iter().any(|seen| seen.ifname == ifname) {
            return Err(format!("two interfaces name the tap {ifname:?}"));
        }
        interfaces.push(TapInterface { ifname, mac });
    }
    Ok(interfaces)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "6f1c2b9e-54b4-4c0e-9d0b-2b3c1e0f7a10";
    const PORT_A: &str = "3d6f8a1e-2c4b-4e9a-8f7d-1a2b3c4d5e6f";
    const PORT_B: &str = "9a8b7c6d-5e4f-4a3b-9c2d-1e0f2a3b4c5d";

    /// A domain shaped like what nova writes, with `metadata` and
    /// `interfaces` spliced in.
    fn domain(id: Option<u32>, metadata: &str, interfaces: &str) -> String {
        let id = id.map(|id| format!(" id='{id}'")).unwrap_or_default();
        format!(
            "<domain type='qemu'{id}>
               <name>instance-0000002a</name>
               <uuid>{UUID}</uuid>
               <metadata>{metadata}</metadata>
               <memory unit='KiB'>131072</memory>
               <devices>
                 <emulator>/usr/bin/qemu-system-x86_64</emulator>
                 <disk type='file' device='disk'><target dev='vda' bus='virtio'/></disk>
                 {interfaces}
                 <serial type='pty'><target port='0'/></serial>
               </devices>
             </domain>"
        )
    }

    fn nova_1_1(ports: &str) -> String {
        format!(
            r#"<nova:instance xmlns:nova="{NOVA_NS_1_1}">
                 <nova:package version="30.0.0"/>
                 <nova:name>web-1</nova:name>
                 <nova:creationTime>2026-11-30 07:00:00</nova:creationTime>
                 <nova:flavor name="m1.tiny"><nova:memory>512</nova:memory></nova:flavor>
                 <nova:owner>
                   <nova:user uuid="0e2d6c3b9a8f4e7d8c6b5a4f3e2d1c0b">alice</nova:user>
                   <nova:project uuid="5b4a3c2d1e0f4a9b8c7d6e5f4a3b2c1d">demo</nova:project>
                 </nova:owner>
                 <nova:root type="image" uuid="7a6b5c4d-3e2f-4a1b-8c9d-0e1f2a3b4c5d"/>
                 <nova:ports>{ports}</nova:ports>
               </nova:instance>"#
        )
    }

    fn bridge(tap: &str, mac: &str) -> String {
        format!(
            "<interface type='bridge'>
               <mac address='{mac}'/>
               <source bridge='br-int'/>
               <virtualport type='openvswitch'/>
               <target dev='{tap}'/>
               <model type='virtio'/>
               <alias name='net0'/>
             </interface>"
        )
    }

    fn port_a() -> String {
        format!(
            r#"<nova:port uuid="{PORT_A}">
                 <nova:ip type="fixed" address="10.0.0.5" ipVersion="4"/>
                 <nova:ip type="fixed" address="fd00::5" ipVersion="6"/>
               </nova:port>"#
        )
    }

    #[test]
    fn nova_1_1_with_one_port() {
        let tap = nova_tap_name(&PORT_A.parse().unwrap());
        assert_eq!(tap, "tap3d6f8a1e-2c");
        let xml = domain(
            Some(7),
            &nova_1_1(&port_a()),
            &bridge(&tap, "FA:16:3E:11:22:33"),
        );
        let desc = DomainDesc::parse(&xml).unwrap();
        assert!(desc.active);
        assert_eq!(desc.name, "instance-0000002a");
        let nova = desc.nova.as_ref().unwrap();
        assert_eq!(nova.namespace, NOVA_NS_1_1);
        assert_eq!(nova.name.as_deref(), Some("web-1"));
        assert_eq!(
            nova.project_id.as_deref(),
            Some("5b4a3c2d1e0f4a9b8c7d6e5f4a3b2c1d")
        );
        let ports = desc.ports();
        assert_eq!(ports.uuid.to_string(), UUID);
        assert_eq!(ports.instance_name.as_deref(), Some("web-1"));
        assert_eq!(
            ports.ports,
            vec![DiscoveredPort {
                ifname: tap,
                mac: Some("fa:16:3e:11:22:33".into()),
                port_id: Some(PORT_A.parse().unwrap()),
                ips: vec![Ipv4Addr::new(10, 0, 0, 5)],
            }]
        );
        assert_eq!(ports.document, None);
    }

    #[test]
    fn nova_1_0_has_owner_and_name_but_no_ports() {
        let metadata = format!(
            r#"<nova:instance xmlns:nova="{NOVA_NS_1_0}">
                 <nova:package version="2014.2"/>
                 <nova:name>old-vm</nova:name>
                 <nova:owner><nova:project uuid="p-legacy">legacy</nova:project></nova:owner>
               </nova:instance>"#
        );
        let desc = DomainDesc::parse(&domain(
            Some(1),
            &metadata,
            &bridge("tap0", "52:54:00:00:00:01"),
        ))
        .unwrap();
        let nova = desc.nova.as_ref().unwrap();
        assert_eq!(nova.namespace, NOVA_NS_1_0);
        assert_eq!(nova.name.as_deref(), Some("old-vm"));
        assert_eq!(nova.project_id.as_deref(), Some("p-legacy"));
        assert!(nova.ports.is_empty());
        let ports = desc.ports();
        assert_eq!(ports.project_id.as_deref(), Some("p-legacy"));
        assert_eq!(ports.ports[0].port_id, None);
        assert!(ports.ports[0].ips.is_empty());
    }

    #[test]
    fn any_prefix_bound_to_the_namespace_is_nova() {
        let metadata = format!(
            r#"<n:instance xmlns:n="{NOVA_NS_1_1}"><n:owner><n:project uuid="p1">x</n:project></n:owner></n:instance>
               <nova:instance xmlns:nova="http://example.com/not-nova"><nova:owner><nova:project uuid="p2"/></nova:owner></nova:instance>"#
        );
        let desc = DomainDesc::parse(&domain(Some(1), &metadata, "")).unwrap();
        assert_eq!(desc.nova.unwrap().project_id.as_deref(), Some("p1"));
    }

    #[test]
    fn multiple_nics_are_matched_to_nova_ports_by_tap_name() {
        let (tap_a, tap_b) = (
            nova_tap_name(&PORT_A.parse().unwrap()),
            nova_tap_name(&PORT_B.parse().unwrap()),
        );
        let ports_xml = format!(
            r#"<nova:port uuid="{PORT_B}"><nova:ip type="fixed" address="192.168.7.9" ipVersion="4"/></nova:port>{}"#,
            port_a()
        );
        let interfaces = format!(
            "{}{}<interface type='ethernet'><mac address='fa:16:3e:00:00:0c'/><target dev='vnet9' managed='no'/></interface>",
            bridge(&tap_a, "fa:16:3e:00:00:0a"),
            bridge(&tap_b, "fa:16:3e:00:00:0b"),
        );
        let ports = DomainDesc::parse(&domain(Some(3), &nova_1_1(&ports_xml), &interfaces))
            .unwrap()
            .ports();
        let summary: Vec<_> = ports
            .ports
            .iter()
            .map(|p| {
                (
                    p.ifname.as_str(),
                    p.mac.as_deref(),
                    p.port_id.map(|id| id.to_string()),
                    p.ips.clone(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (
                    tap_a.as_str(),
                    Some("fa:16:3e:00:00:0a"),
                    Some(PORT_A.to_string()),
                    vec![Ipv4Addr::new(10, 0, 0, 5)]
                ),
                (
                    tap_b.as_str(),
                    Some("fa:16:3e:00:00:0b"),
                    Some(PORT_B.to_string()),
                    vec![Ipv4Addr::new(192, 168, 7, 9)]
                ),
                // Three taps and two nova ports: the third matches none.
                ("vnet9", Some("fa:16:3e:00:00:0c"), None, vec![]),
            ]
        );
    }

    #[test]
    fn one_nic_and_one_nova_port_match_whatever_the_tap_is_called() {
        let ports = DomainDesc::parse(&domain(
            Some(3),
            &nova_1_1(&port_a()),
            &bridge("vnet0", "52:54:00:aa:bb:cc"),
        ))
        .unwrap()
        .ports();
        assert_eq!(ports.ports[0].port_id, Some(PORT_A.parse().unwrap()));
        assert_eq!(ports.ports[0].ips, vec![Ipv4Addr::new(10, 0, 0, 5)]);
    }

    #[test]
    fn interfaces_without_a_tap_are_left_out() {
        let interfaces = "
            <interface type='bridge'><mac address='52:54:00:00:00:01'/><source bridge='br0'/></interface>
            <interface type='bridge'><mac address='52:54:00:00:00:02'/><target dev=''/></interface>
            <interface type='direct'><mac address='52:54:00:00:00:03'/><source dev='eth0' mode='bridge'/><target dev='macvtap0'/></interface>
            <interface type='vhostuser'><mac address='52:54:00:00:00:04'/><source type='unix' path='/run/vhu.sock' mode='server'/></interface>
            <interface type='hostdev'><mac address='52:54:00:00:00:05'/></interface>
            <interface type='network'><mac address='52:54:00:00:00:06'/><source network='default'/><target dev='vnet3'/></interface>
            <interface type='ethernet'><mac address='52:54:00:00:00:07'/><target dev='tap-eth' managed='no'/></interface>";
        let desc = DomainDesc::parse(&domain(Some(2), "", interfaces)).unwrap();
        assert_eq!(
            desc.interfaces,
            vec![
                TapInterface {
                    ifname: "vnet3".into(),
                    mac: Some("52:54:00:00:00:06".into())
                },
                TapInterface {
                    ifname: "tap-eth".into(),
                    mac: Some("52:54:00:00:00:07".into())
                },
            ]
        );
        let ports = desc.ports();
        assert_eq!(ports.project_id, None);
        assert_eq!(ports.instance_name, None);
    }

    #[test]
    fn an_inactive_domain_has_no_id() {
        let desc = DomainDesc::parse(&domain(None, "", "")).unwrap();
        assert!(!desc.active);
        assert!(desc.interfaces.is_empty());
        assert_eq!(desc.nova, None);
    }

    #[test]
    fn the_document_element_is_read_raw() {
        let metadata = format!(
            r#"<mdr:instance xmlns:mdr="{DOCUMENT_NS}">{{"name": "a &amp; b", "meta": {{"x": "&lt;y&gt;"}}}}</mdr:instance>
               <other:instance xmlns:other="urn:someone-else">{{"name": "not ours"}}</other:instance>"#
        );
        let desc = DomainDesc::parse(&domain(Some(1), &metadata, "")).unwrap();
        assert_eq!(
            desc.document.as_deref(),
            Some(r#"{"name": "a & b", "meta": {"x": "<y>"}}"#)
        );
        // CDATA is text too.
        let metadata = format!(
            r#"<x:instance xmlns:x="{DOCUMENT_NS}"><![CDATA[{{"name": "<raw>"}}]]></x:instance>"#
        );
        let desc = DomainDesc::parse(&domain(Some(1), &metadata, "")).unwrap();
        assert_eq!(desc.document.as_deref(), Some(r#"{"name": "<raw>"}"#));
    }

    #[track_caller]
    fn assert_malformed(xml: &str, expected: &str) {
        let err = DomainDesc::parse(xml).expect_err("should not parse");
        assert!(
            err.contains(expected),
            "{err:?} should contain {expected:?}"
        );
        assert!(!err.contains('\n'), "not one line: {err:?}");
    }

    #[test]
    fn malformed_domains_are_refused_with_the_reason() {
        assert_malformed("<domain><name>x</name>", "domain XML:");
        assert_malformed("not xml at all", "domain XML:");
        assert_malformed(
            &format!("<network><uuid>{UUID}</uuid></network>"),
            "not <domain>",
        );
        assert_malformed("<domain><name>x</name></domain>", "no <uuid>");
        assert_malformed(
            "<domain><uuid>nope</uuid><name>x</name></domain>",
            "<uuid> \"nope\"",
        );
        assert_malformed(
            &format!("<domain><uuid>{UUID}</uuid></domain>"),
            "no <name>",
        );
        assert_malformed(
            &format!("<domain><uuid>{UUID}</uuid><uuid>{UUID}</uuid><name>x</name></domain>"),
            "more than one <uuid>",
        );
        let twice = format!(
            "{}{}",
            bridge("tap0", "52:54:00:00:00:01"),
            bridge("tap0", "52:54:00:00:00:02")
        );
        assert_malformed(
            &domain(Some(1), "", &twice),
            "two interfaces name the tap \"tap0\"",
        );
    }

    #[test]
    fn malformed_nova_metadata_is_refused() {
        let bad_port = r#"<nova:port uuid="port-1"/>"#;
        assert_malformed(
            &domain(Some(1), &nova_1_1(bad_port), ""),
            "<nova:port uuid=\"port-1\"> is not a UUID",
        );
        let bad_ip = format!(
            r#"<nova:port uuid="{PORT_A}"><nova:ip type="fixed" address="10.0.0.300" ipVersion="4"/></nova:port>"#
        );
        assert_malformed(
            &domain(Some(1), &nova_1_1(&bad_ip), ""),
            "is not an IPv4 address",
        );
        let twice = format!("{}{}", port_a(), port_a());
        assert_malformed(&domain(Some(1), &nova_1_1(&twice), ""), "is listed twice");
        let no_project_id = format!(
            r#"<nova:instance xmlns:nova="{NOVA_NS_1_1}"><nova:owner><nova:project>demo</nova:project></nova:owner></nova:instance>"#
        );
        assert_malformed(
            &domain(Some(1), &no_project_id, ""),
            "<nova:project uuid=\"\">",
        );
        let both = format!(
            r#"<a:instance xmlns:a="{NOVA_NS_1_0}"/><b:instance xmlns:b="{NOVA_NS_1_1}"/>"#
        );
        assert_malformed(&domain(Some(1), &both, ""), "both the 1.0 and 1.1");
        let two_owners = format!(
            r#"<nova:instance xmlns:nova="{NOVA_NS_1_1}"><nova:owner/><nova:owner/></nova:instance>"#
        );
        assert_malformed(
            &domain(Some(1), &two_owners, ""),
            "nova metadata: more than one <owner>",
        );
        let two_documents = format!(
            r#"<a:instance xmlns:a="{DOCUMENT_NS}">{{}}</a:instance><b:instance xmlns:b="{DOCUMENT_NS}">{{}}</b:instance>"#
        );
        assert_malformed(
            &domain(Some(1), &two_documents, ""),
            "instance document: more than one",
        );
    }

    #[test]
    fn floating_and_v6_addresses_are_skipped_not_refused() {
        let port = format!(
            r#"<nova:port uuid="{PORT_A}">
                 <nova:ip type="floating" address="203.0.113.7" ipVersion="4"/>
                 <nova:ip type="fixed" address="2001:db8::7" ipVersion="6"/>
                 <nova:ip type="fixed" address="10.1.2.3" ipVersion="4"/>
               </nova:port>"#
        );
        let desc = DomainDesc::parse(&domain(Some(1), &nova_1_1(&port), "")).unwrap();
        assert_eq!(
            desc.nova.unwrap().ports[0].fixed_ips,
            vec![Ipv4Addr::new(10, 1, 2, 3)]
        );
    }
}
