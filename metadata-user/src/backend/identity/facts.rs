//! What an identity says about an instance. The local backend fills it from
//! the instance document; the nova backend from nova's answers. The
//! instance and its project always come from the port the request came
//! through, so no answer can make one guest sign as another.
/// One instance, as the identity document and the JWT show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceFacts {
    pub uuid: uuid::Uuid,
    pub project_id: Option<String>,
    pub availability_zone: String,
    /// The EC2-style id (`i-…`), as `meta-data/instance-id` shows it.
    pub ec2_instance_id: String,
    pub image_id: String,
    pub instance_type: String,
    pub private_ip: String,
    pub kernel_id: Option<String>,
    pub ramdisk_id: Option<String>,
}
