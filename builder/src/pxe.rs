//! The network-boot artifacts, `pxe/` beside the disk image: the same kernel,
//! initrd and root image (byte for byte slot A's) as the disk, an iPXE
//! script that boots them live or installs the disk image, the disk image's
//! pieces for installing ([`install`]), and a dnsmasq snippet.
//!
//! Boot chain: the firmware's PXE (or iPXE in the NIC's ROM) gets `ipxe.efi`
//! over TFTP, iPXE fetches `boot.ipxe` over HTTP, which loads `vmlinuz` and
//! `initrd.img` with `boot=habuild-live`: the initramfs script
//! (`images/debian/.../scripts/habuild-live`) brings the NIC up with DHCP,
//! downloads `root.img`, checks it against the sha256 this module writes on
//! the kernel command line, runs it read-only from RAM and puts `/var` on
//! the first empty local disk. With `habuild-mode` set to `install` (iPXE
//! variable; `install.ipxe` sets it and chains `boot.ipxe`) the kernel line
//! says `habuild.mode=install` instead: the initrd (`scripts/habuild-install`)
//! writes the pieces listed in `disk.list` to the named or first empty disk
//! (the served `cluster.toml` put on the ESP piece first), verifies them,
//! writes the GPT last and reboots into the disk. Everything
//! is written under a temporary name and renamed into place with the rest of
//! the build ([`PxeOutput::commit`]).

pub mod install;

use std::fs;
use std::path::{Path, PathBuf};

use crate::disk::layout::Layout;
use crate::error::{IoContext, Result};
use crate::manifest::{sha256_bytes, sha256_file, Artifact};

/// The directory name under the output directory.
pub const DIR: &str = "pxe";

/// What the network boot serves.
#[derive(Debug)]
pub struct PxeInputs<'a> {
    pub name: &'a str,
    pub kernel: &'a [u8],
    pub initrd: &'a [u8],
    /// The root filesystem image (slot A's bytes).
    pub root_img: &'a Path,
    /// `erofs`, `squashfs`: the kernel's name for the root filesystem.
    pub root_fstype: &'a str,
    /// The profile's kernel command line (console settings).
    pub cmdline: &'a str,
    /// The site's cluster file when one is baked in.
    pub cluster: Option<&'a str>,
    /// The finished raw disk and its layout: install mode's pieces are cut
    /// from it.
    pub raw_disk: &'a Path,
    pub layout: &'a Layout,
}

/// `pxe/` being written under a temporary name; removed on drop unless
/// committed.
#[derive(Debug)]
pub struct PxeOutput {
    tmp: PathBuf,
    fin: PathBuf,
    committed: bool,
}

impl PxeOutput {
    /// Write every artifact under `out_dir/.pxe.partial-<pid>`. Returns the
    /// artifacts (named `pxe/<file>`) for the manifest.
    pub fn write(out_dir: &Path, inputs: &PxeInputs) -> Result<(PxeOutput, Vec<Artifact>)> {
        let tmp = out_dir.join(format!(".{DIR}.partial-{}", std::process::id()));
        let out = PxeOutput {
            fin: out_dir.join(DIR),
            tmp,
            committed: false,
        };
        if out.tmp.exists() {
            fs::remove_dir_all(&out.tmp).at(&out.tmp)?;
        }
        fs::create_dir_all(&out.tmp).at(&out.tmp)?;
        let root = out.tmp.join("root.img");
        // The work directory sits in the output directory, so a hard link
        // costs nothing; copy across filesystems.
        if fs::hard_link(inputs.root_img, &root).is_err() {
            fs::copy(inputs.root_img, &root).at(&root)?;
        }
        let (root_sha, root_size) = sha256_file(&root)?;
        let pieces = install::write_pieces(
            &out.tmp,
            inputs.raw_disk,
            inputs.layout,
            &root_sha,
            root_size,
        )?;
        let list = install::write_list(&out.tmp, inputs.name, inputs.layout.disk_bytes, &pieces)?;
        let list_sha = sha256_bytes(&list);
        let mut artifacts = vec![Artifact {
            file: format!("{DIR}/{}", install::LIST),
            sha256: list_sha.clone(),
            size: list.len() as u64,
        }];
        for p in pieces
            .iter()
            .filter(|p| p.file != install::ZERO && p.file != "root.img")
        {
            artifacts.push(Artifact {
                file: format!("{DIR}/{}", p.file),
                sha256: p.sha256.clone(),
                size: p.length,
            });
        }
        let mut files: Vec<(&str, Vec<u8>)> = vec![
            ("vmlinuz", inputs.kernel.to_vec()),
            ("initrd.img", inputs.initrd.to_vec()),
            (
                "boot.ipxe",
                ipxe_script(inputs, &root_sha, &list_sha).into_bytes(),
            ),
            ("install.ipxe", install_script(inputs.name).into_bytes()),
            ("dnsmasq.conf", dnsmasq_snippet(inputs.name).into_bytes()),
            ("README.txt", readme(inputs.name).into_bytes()),
        ];
        if let Some(c) = inputs.cluster {
            files.push(("cluster.toml", c.as_bytes().to_vec()));
        }
        for (name, bytes) in &files {
            let path = out.tmp.join(name);
            fs::write(&path, bytes).at(&path)?;
            artifacts.push(Artifact {
                file: format!("{DIR}/{name}"),
                sha256: sha256_bytes(bytes),
                size: bytes.len() as u64,
            });
        }
        artifacts.push(Artifact {
            file: format!("{DIR}/root.img"),
            sha256: root_sha,
            size: root_size,
        });
        artifacts.sort_by(|a, b| a.file.cmp(&b.file));
        Ok((out, artifacts))
    }

    /// Replace `pxe/` with the new one.
    pub fn commit(mut self) -> Result<PathBuf> {
        if self.fin.exists() {
            let old = self
                .fin
                .with_file_name(format!(".{DIR}.old.partial-{}", std::process::id()));
            fs::rename(&self.fin, &old).at(&self.fin)?;
            fs::remove_dir_all(&old).at(&old)?;
        }
        fs::rename(&self.tmp, &self.fin).at(&self.fin)?;
        self.committed = true;
        Ok(self.fin.clone())
    }
}

impl Drop for PxeOutput {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
}

/// The kernel command line of a live network boot; `base` is the URL the
/// directory is served at (an iPXE expression in the script).
pub fn live_cmdline(base: &str, inputs: &PxeInputs, root_sha: &str) -> String {
    format!(
        "initrd=initrd.img boot=habuild-live habuild.root={base}root.img habuild.root_sha256={root_sha} \
         habuild.cluster={base}cluster.toml ip=dhcp rootfstype={} ro {}",
        inputs.root_fstype, inputs.cmdline
    )
}

/// The kernel command line of an install boot: the initrd writes the pieces
/// `disk.list` names (the list pinned by its sha256) to a disk, with the
/// served `cluster.toml` on its ESP (as live mode uses it), and reboots.
pub fn install_cmdline(base: &str, inputs: &PxeInputs, list_sha: &str) -> String {
    format!(
        "initrd=initrd.img boot=habuild-live habuild.mode=install habuild.disk_list={base}{} \
         habuild.disk_list_sha256={list_sha} habuild.cluster={base}cluster.toml ip=dhcp {}",
        install::LIST,
        inputs.cmdline
    )
}

fn ipxe_script(inputs: &PxeInputs, root_sha: &str, list_sha: &str) -> String {
    format!(
        "#!ipxe\n\
         # habuild {name}: network boot. Serve this directory over HTTP and\n\
         # point iPXE here (dnsmasq.conf beside this file shows how). base-url is\n\
         # where this directory is served; by default the DHCP next-server's\n\
         # /habuild/.\n\
         # live (default): the node fetches root.img (checked against its sha256\n\
         # below) and cluster.toml from there, runs the root from RAM and keeps\n\
         # /var on its first empty disk.\n\
         # install (set habuild-mode install first, as install.ipxe does): the\n\
         # node writes the disk image (disk.list) to the disk named by\n\
         # habuild-install-disk (e.g. /dev/nvme0n1), else to its first empty disk\n\
         # (never one holding data) with cluster.toml from here on its ESP,\n\
         # verifies it and reboots into it. Boot order disk first, network\n\
         # second: the installed disk boots from then on.\n\
         # (The x prefixes keep iseq's two arguments when habuild-mode is unset.)\n\
         isset ${{base-url}} || set base-url http://${{next-server}}/habuild/\n\
         iseq x${{habuild-mode}} xinstall && goto install ||\n\
         echo habuild: booting {name} live from ${{base-url}}\n\
         kernel ${{base-url}}vmlinuz {live}\n\
         initrd ${{base-url}}initrd.img\n\
         boot\n\
         :install\n\
         isset ${{habuild-install-disk}} && set habuild-disk-arg habuild.install_disk=${{habuild-install-disk}} ||\n\
         echo habuild: installing {name} to disk from ${{base-url}}\n\
         kernel ${{base-url}}vmlinuz {install} ${{habuild-disk-arg}}\n\
         initrd ${{base-url}}initrd.img\n\
         boot\n",
        name = inputs.name,
        live = live_cmdline("${base-url}", inputs, root_sha),
        install = install_cmdline("${base-url}", inputs, list_sha),
    )
}

fn install_script(name: &str) -> String {
    format!(
        "#!ipxe\n\
         # habuild {name}: install mode. Point a machine's iPXE here instead of\n\
         # boot.ipxe to write the disk image to its first empty disk (set\n\
         # habuild-install-disk to name one) and reboot into it.\n\
         set habuild-mode install\n\
         chain boot.ipxe\n"
    )
}

fn dnsmasq_snippet(name: &str) -> String {
    format!(
        "# habuild {name}: network boot with dnsmasq beside your existing DHCP server\n\
         # (proxy DHCP: dnsmasq hands out no addresses, only the boot information).\n\
         # Replace 192.0.2.0 with your network's address and 192.0.2.10 with the\n\
         # host that serves this pxe/ directory over HTTP at /habuild/.\n\
         # ipxe.efi comes from Debian's ipxe package: cp /usr/lib/ipxe/ipxe.efi into tftp-root.\n\
         port=0\n\
         dhcp-range=192.0.2.0,proxy\n\
         enable-tftp\n\
         tftp-root=/srv/habuild-tftp\n\
         # First stage: the firmware's PXE loads iPXE; iPXE (DHCP option 175) gets the script.\n\
         dhcp-match=set:ipxe,175\n\
         pxe-service=tag:!ipxe,x86-64_EFI,\"habuild: iPXE\",ipxe.efi\n\
         dhcp-boot=tag:ipxe,http://192.0.2.10/habuild/boot.ipxe\n\
         #\n\
         # UEFI HTTP boot (no TFTP): the firmware fetches iPXE over HTTP. Put\n\
         # ipxe.efi in this directory too, and have the server that hands out\n\
         # addresses answer the firmware's HTTPClient requests (a proxy DHCP\n\
         # answers PXE clients only). With dnsmasq as that server (a dhcp-range\n\
         # with addresses instead of proxy), uncomment:\n\
         # dhcp-vendorclass=set:efihttp,HTTPClient\n\
         # dhcp-option-force=tag:efihttp,60,HTTPClient\n\
         # dhcp-boot=tag:efihttp,http://192.0.2.10/habuild/ipxe.efi\n\
         # Another DHCP server: the same three answers for vendor class\n\
         # HTTPClient (option 60 HTTPClient, boot file the URL above).\n"
    )
}

fn readme(name: &str) -> String {
    format!(
        "habuild {name}: network boot artifacts.\n\
         \n\
         vmlinuz, initrd.img  the kernel and initrd of the disk image's slot A\n\
         root.img             the read-only root, the same bytes as slot A\n\
         boot.ipxe            iPXE script: boots them live (root in RAM, /var on the first empty disk),\n\
                              or installs the disk image when habuild-mode is install\n\
         install.ipxe         sets habuild-mode install and chains boot.ipxe\n\
         disk.list            install mode: the disk image's pieces (offset, length, file, sha256)\n\
         disk-head.img        protective MBR + primary GPT (written last), esp.img: the ESP,\n\
         disk-tail.img        the backup GPT; root.img is slot A\n\
         cluster.toml         the site's cluster file, fetched by live and install boots (present when\n\
                              baked with --cluster; otherwise put yours here: install puts it on the ESP)\n\
         dnsmasq.conf         a proxy-DHCP + TFTP snippet that points PXE clients at boot.ipxe,\n\
                              and the UEFI HTTP boot answers (ipxe.efi served beside these files)\n\
         \n\
         manifest.json beside this directory lists each file's sha256 and size.\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Partitions;

    fn layout() -> Layout {
        Layout::new(
            &Partitions {
                esp_mib: 64,
                root_mib: 256,
                data_mib: 64,
            },
            &[1; 32],
        )
    }

    /// A sparse raw disk of the layout's size in the test's directory.
    fn raw_disk(dir: &Path, layout: &Layout) -> PathBuf {
        let raw = dir.join("disk.raw");
        fs::File::create(&raw)
            .unwrap()
            .set_len(layout.disk_bytes)
            .unwrap();
        raw
    }

    fn inputs<'a>(
        root: &'a Path,
        cluster: Option<&'a str>,
        raw_disk: &'a Path,
        layout: &'a Layout,
    ) -> PxeInputs<'a> {
        PxeInputs {
            name: "debian-12",
            kernel: b"kernel",
            initrd: b"initrd",
            root_img: root,
            root_fstype: "erofs",
            cmdline: "console=ttyS0,115200",
            cluster,
            raw_disk,
            layout,
        }
    }

    #[test]
    fn writes_everything_pins_the_root_sha_and_commits_atomically() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root.img");
        fs::write(&root, b"erofs bytes").unwrap();
        let out_dir = t.path().join("out");
        fs::create_dir_all(&out_dir).unwrap();
        let layout = layout();
        let raw = raw_disk(t.path(), &layout);
        let (out, artifacts) =
            PxeOutput::write(&out_dir, &inputs(&root, Some("[cluster]\n"), &raw, &layout)).unwrap();
        assert!(!out_dir.join(DIR).exists(), "nothing at pxe/ before commit");
        let names: Vec<&str> = artifacts.iter().map(|a| a.file.as_str()).collect();
        assert_eq!(
            names,
            [
                "pxe/README.txt",
                "pxe/boot.ipxe",
                "pxe/cluster.toml",
                "pxe/disk-head.img",
                "pxe/disk-tail.img",
                "pxe/disk.list",
                "pxe/dnsmasq.conf",
                "pxe/esp.img",
                "pxe/initrd.img",
                "pxe/install.ipxe",
                "pxe/root.img",
                "pxe/vmlinuz"
            ]
        );
        let dir = out.commit().unwrap();
        let root_sha = sha256_bytes(b"erofs bytes");
        let script = fs::read_to_string(dir.join("boot.ipxe")).unwrap();
        assert!(script.starts_with("#!ipxe\n"));
        assert!(
            script.contains(&format!("habuild.root_sha256={root_sha} ")),
            "{script}"
        );
        assert!(script.contains("boot=habuild-live"));
        assert!(script.contains("rootfstype=erofs ro console=ttyS0,115200\n"));
        // install mode: the list pinned by its sha256, the live entry stays the default
        let list_sha = sha256_bytes(&fs::read(dir.join("disk.list")).unwrap());
        assert!(
            script.contains(&format!(
                "habuild.mode=install habuild.disk_list=${{base-url}}disk.list habuild.disk_list_sha256={list_sha} habuild.cluster=${{base-url}}cluster.toml ip=dhcp console=ttyS0,115200 ${{habuild-disk-arg}}\n"
            )),
            "{script}"
        );
        let live = script.find("habuild.root=").unwrap();
        assert!(live < script.find(":install").unwrap(), "live comes first");
        let list = fs::read_to_string(dir.join("disk.list")).unwrap();
        assert!(
            list.contains(&format!(
                "piece {} 11 root.img {}\n",
                layout.root_a.offset(),
                sha256_bytes(b"erofs bytes")
            )),
            "{list}"
        );
        let chain = fs::read_to_string(dir.join("install.ipxe")).unwrap();
        assert!(chain.contains("set habuild-mode install\nchain boot.ipxe\n"));
        assert_eq!(fs::read(dir.join("root.img")).unwrap(), b"erofs bytes");
        for a in &artifacts {
            let (sha, size) = sha256_file(&out_dir.join(&a.file)).unwrap();
            assert_eq!((sha, size), (a.sha256.clone(), a.size), "{}", a.file);
        }
        let leftovers: Vec<_> = fs::read_dir(&out_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, [std::ffi::OsString::from("pxe")]);
    }

    #[test]
    fn a_build_that_fails_leaves_no_pxe_dir_and_a_rebuild_replaces_the_old_one() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root.img");
        fs::write(&root, b"one").unwrap();
        let out_dir = t.path().join("out");
        fs::create_dir_all(&out_dir).unwrap();
        let layout = layout();
        let raw = raw_disk(t.path(), &layout);
        {
            let (_out, _) =
                PxeOutput::write(&out_dir, &inputs(&root, None, &raw, &layout)).unwrap();
        }
        assert_eq!(fs::read_dir(&out_dir).unwrap().count(), 0);
        let (out, _) = PxeOutput::write(&out_dir, &inputs(&root, None, &raw, &layout)).unwrap();
        out.commit().unwrap();
        assert!(!out_dir.join(DIR).join("cluster.toml").exists());
        let root2 = t.path().join("root2.img");
        fs::write(&root2, b"two").unwrap();
        let (out, _) =
            PxeOutput::write(&out_dir, &inputs(&root2, Some("x"), &raw, &layout)).unwrap();
        out.commit().unwrap();
        assert_eq!(fs::read(out_dir.join("pxe/root.img")).unwrap(), b"two");
        assert!(out_dir.join("pxe/cluster.toml").exists());
        assert_eq!(fs::read_dir(&out_dir).unwrap().count(), 1);
    }

    /// The initrd's `habuild_smbios_machine_id` (scripts/habuild-functions),
    /// run by busybox's sh as in the initramfs: the machine-id a RAM-/var
    /// node takes from its firmware's system UUID, and none for the values
    /// firmware uses when it has no UUID.
    #[test]
    fn a_ram_node_takes_its_machine_id_from_a_usable_smbios_uuid_only() {
        let functions = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../images/debian/etc/initramfs-tools/scripts/habuild-functions");
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .find(|b| Path::new(b).exists())
            .expect("busybox not found: run scripts/setup");
        let id_of = |uuid: Option<&str>| -> String {
            let dmi = tempfile::tempdir().unwrap();
            if let Some(u) = uuid {
                fs::write(dmi.path().join("product_uuid"), format!("{u}\n")).unwrap();
            }
            let out = std::process::Command::new(busybox)
                .args(["sh", "-c", ". \"$0\" && habuild_smbios_machine_id"])
                .arg(&functions)
                .env("HB_DMI", dmi.path())
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            String::from_utf8(out.stdout).unwrap()
        };
        assert_eq!(
            id_of(Some("4C4C4544-0042-3510-8057-B4C04F564B32")),
            "4c4c4544004235108057b4c04f564b32\n"
        );
        for unusable in [
            None,
            Some("00000000-0000-0000-0000-000000000000"),
            Some("FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF"),
            Some("03000200-0400-0500-0006-000700080009"),
            Some("not-a-uuid"),
            Some("4C4C4544-0042-3510-8057-B4C04F564B3Z"),
        ] {
            assert_eq!(id_of(unusable), "", "{unusable:?}");
        }
    }
}
