//! Parsing the gluster CLI's answers (`volume info`, `pool list`).

/// What `gluster volume info VOLUME` says of the volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    pub id: String,
    pub kind: String,
    pub status: String,
    /// Bricks per replica set (1 for a plain distributed volume).
    pub replica: u32,
    pub bricks: Vec<String>,
}

/// Parses `gluster volume info NAME` (None when it names no volume).
pub fn parse_volume_info(text: &str) -> Option<VolumeInfo> {
    let mut v = VolumeInfo {
        id: String::new(),
        kind: String::new(),
        status: String::new(),
        replica: 1,
        bricks: Vec::new(),
    };
    let mut named = false;
    for line in text.lines() {
        let Some((k, val)) = line.split_once(':') else {
            continue;
        };
        let val = val.trim();
        match k.trim() {
            "Volume Name" => named = true,
            "Volume ID" => v.id = val.into(),
            "Type" => v.kind = val.into(),
            "Status" => v.status = val.into(),
            // "1 x 3 = 3" (replicated) or "3" (distributed).
            "Number of Bricks" => {
                if let Some((_, rest)) = val.split_once(" x ") {
                    v.replica = rest
                        .split_whitespace()
                        .next()
                        .and_then(|r| r.parse().ok())
                        .unwrap_or(1);
                }
            }
            k if k.starts_with("Brick")
                && k[5..].chars().all(|c| c.is_ascii_digit())
                && k.len() > 5 =>
            {
                v.bricks.push(val.to_string())
            }
            _ => {}
        }
    }
    named.then_some(v)
}

/// Hostnames/addresses `gluster pool list` shows as connected (without localhost).
pub fn connected_peers(pool_list: &str) -> Vec<String> {
    pool_list
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3 && f[2] == "Connected" && f[1] != "localhost").then(|| f[1].to_string())
        })
        .collect()
}
