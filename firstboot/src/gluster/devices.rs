//! Block devices a brick may use: `lsblk -J` parsed, and the policy that
//! only an empty device (no partitions, no filesystem or LVM signature, not
//! mounted, not read-only, not a partition) is ever touched.

use serde_json::Value;

use super::GlusterError;

/// One block device as `lsblk -J -b -o NAME,PATH,TYPE,SIZE,FSTYPE,RO,MOUNTPOINT,PTTYPE` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDevice {
    pub path: String,
    pub kind: String,
    pub size: u64,
    pub fstype: Option<String>,
    pub pttype: Option<String>,
    pub read_only: bool,
    pub mountpoint: Option<String>,
    pub children: Vec<BlockDevice>,
}

/// Parses `lsblk -J -b -o NAME,PATH,TYPE,SIZE,FSTYPE,RO,MOUNTPOINT,PTTYPE` output.
pub fn parse_lsblk(json: &str) -> Result<Vec<BlockDevice>, GlusterError> {
    let v: Value = serde_json::from_str(json).map_err(|e| GlusterError::Lsblk(e.to_string()))?;
    fn dev(v: &Value) -> BlockDevice {
        let s = |k: &str| v[k].as_str().filter(|s| !s.is_empty()).map(String::from);
        BlockDevice {
            path: s("path").unwrap_or_default(),
            kind: s("type").unwrap_or_default(),
            size: v["size"]
                .as_u64()
                .or_else(|| v["size"].as_str().and_then(|s| s.parse().ok()))
                .unwrap_or(0),
            fstype: s("fstype"),
            pttype: s("pttype"),
            read_only: v["ro"].as_bool().unwrap_or(v["ro"] == "1"),
            mountpoint: s("mountpoint"),
            children: v["children"]
                .as_array()
                .map(|c| c.iter().map(dev).collect())
                .unwrap_or_default(),
        }
    }
    Ok(v["blockdevices"]
        .as_array()
        .ok_or_else(|| GlusterError::Lsblk("no \"blockdevices\" array".into()))?
        .iter()
        .map(dev)
        .collect())
}

/// Why `d` must not be used for a brick, or `None` when it is empty.
pub fn unusable_reason(d: &BlockDevice) -> Option<String> {
    if d.read_only {
        return Some("is read-only".into());
    }
    if d.kind != "disk" && d.kind != "loop" {
        return Some(format!("is a {} (a whole disk is needed)", d.kind));
    }
    if let Some(pt) = &d.pttype {
        return Some(format!("has a {pt} partition table"));
    }
    if !d.children.is_empty() {
        return Some(format!("has {} partition(s) or holders", d.children.len()));
    }
    if let Some(fs) = &d.fstype {
        return Some(format!("holds a {fs} signature"));
    }
    if let Some(m) = &d.mountpoint {
        return Some(format!("is mounted on {m}"));
    }
    None
}

/// Disks with nothing on them (the `spare_disks` fact), by path.
pub fn spare_disks(devices: &[BlockDevice]) -> Vec<String> {
    devices
        .iter()
        .filter(|d| d.kind == "disk" && d.size > 0 && unusable_reason(d).is_none())
        .map(|d| d.path.clone())
        .collect()
}

/// The configured `device` if it exists and is empty; an error naming why otherwise.
pub fn check_configured(devices: &[BlockDevice], device: &str) -> Result<(), GlusterError> {
    fn find<'a>(ds: &'a [BlockDevice], p: &str) -> Option<&'a BlockDevice> {
        ds.iter()
            .find_map(|d| (d.path == p).then_some(d).or_else(|| find(&d.children, p)))
    }
    let d = find(devices, device).ok_or_else(|| GlusterError::NoSuchDevice(device.into()))?;
    match unusable_reason(d) {
        None => Ok(()),
        Some(why) => Err(GlusterError::DeviceNotUsable {
            device: device.into(),
            why,
        }),
    }
}
