//! Images without a registry: podman builds `FROM scratch` images from static binaries and saves
//! them as archives, `ctr images import` loads them into the node's containerd.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

use super::{APPS_IMAGE, Node, PAUSE_IMAGE, lock_within, run_checked, run_ok};
use crate::binary::workspace_root;

/// An image built without a registry (podman, `FROM scratch`), saved as an archive for
/// `ctr images import`.
#[derive(Debug)]
pub struct NodeImages {
    tag: String,
    archive: PathBuf,
}

impl NodeImages {
    /// [`PAUSE_IMAGE`]: a static Go program that waits for SIGTERM (the sandbox's process).
    pub async fn pause() -> Self {
        let _lock = lock_images().await;
        let rootfs = images_dir().join("pause-rootfs");
        std::fs::create_dir_all(&rootfs).expect("the pause root");
        go_build_static(&pause_source(), ".", &rootfs.join("pause")).await;
        Self::build(PAUSE_IMAGE, &rootfs, "ENTRYPOINT [\"/pause\"]\n", "pause").await
    }

    /// [`APPS_IMAGE`]: the Go SDK clients of `tests/go` built static (`CGO_ENABLED=0`) at
    /// `/usr/local/bin/{aws,gcp,azure}`, and `/usr/local/bin/wait` (the pause program: a
    /// long-running app that stops on SIGTERM), a `/tmp`, running as 65532.
    pub async fn apps() -> Self {
        let _lock = lock_images().await;
        let dir = images_dir();
        let rootfs = dir.join("apps-rootfs");
        let bin = rootfs.join("usr/local/bin");
        std::fs::create_dir_all(&bin).expect("the apps' bin directory");
        std::fs::create_dir_all(rootfs.join("tmp")).expect("the apps' tmp");
        let source = workspace_root().join("tests/go");
        for program in ["aws", "gcp", "azure"] {
            go_build_static(&source, &format!("./{program}"), &bin.join(program)).await;
        }
        go_build_static(&pause_source(), ".", &bin.join("wait")).await;
        Self::build(APPS_IMAGE, &rootfs, "USER 65532:65532\n", "apps").await
    }

    /// The keyless image `scripts/image` builds (`localhost/keyless:dev`, static), before the tests.
    pub async fn keyless(podman: &crate::podman::Podman) -> Self {
        podman.need_sidecar_image().await;
        let _lock = lock_images().await;
        Self::save(crate::podman::SIDECAR_IMAGE, "keyless").await
    }

    /// The release's full-CLI image `scripts/image --full` builds (`localhost/keyless-webhook:dev`,
    /// static), before the tests: what the chart's webhook and `keyless node` run.
    pub async fn webhook(podman: &crate::podman::Podman) -> Self {
        podman.need_webhook_image().await;
        let _lock = lock_images().await;
        Self::save(crate::podman::WEBHOOK_IMAGE, "keyless-webhook").await
    }

    /// `tag`: image `base` with `files` (path in the image, contents; mode 0644, root's) added: a
    /// real image with a test's CA in it, say (the pods' only way to a file without a volume).
    pub async fn with_files(base: &str, tag: &str, files: &[(&str, &str)]) -> Self {
        let _lock = lock_images().await;
        let name = tag.rsplit('/').next().unwrap_or(tag).replace(':', "-");
        let dir = images_dir();
        let context = dir.join(format!("{name}-context"));
        let _ = std::fs::remove_dir_all(&context);
        let mut containerfile = format!("FROM {base}\n");
        for (i, (path, contents)) in files.iter().enumerate() {
            std::fs::create_dir_all(&context).expect("a build context");
            std::fs::write(context.join(format!("file-{i}")), contents).expect("a file of the image");
            containerfile.push_str(&format!("COPY file-{i} {path}\n"));
        }
        std::fs::create_dir_all(&context).expect("a build context");
        let path = dir.join(format!("{name}.Containerfile"));
        std::fs::write(&path, containerfile).expect("a Containerfile");
        let mut command = Command::new("podman");
        command.args(["build", "--quiet", "--pull=never", "-f"]).arg(&path).args(["-t", tag]).arg(&context);
        run_ok(command, &format!("podman build {tag}")).await;
        Self::save(tag, &name).await
    }

    async fn build(tag: &str, rootfs: &Path, instructions: &str, name: &str) -> Self {
        let dir = images_dir();
        let containerfile = dir.join(format!("{name}.Containerfile"));
        std::fs::write(&containerfile, format!("FROM scratch\nCOPY rootfs/ /\n{instructions}"))
            .expect("a Containerfile");
        let context = dir.join(format!("{name}-context"));
        let _ = std::fs::remove_dir_all(&context);
        std::fs::create_dir_all(&context).expect("a build context");
        run_checked("cp", &["-a", &rootfs.display().to_string(), &context.join("rootfs").display().to_string()]);
        let mut command = Command::new("podman");
        command.args(["build", "--quiet", "--pull=never", "-f"]).arg(&containerfile).args(["-t", tag]).arg(&context);
        run_ok(command, &format!("podman build {tag}")).await;
        Self::save(tag, name).await
    }

    async fn save(tag: &str, name: &str) -> Self {
        let archive = images_dir().join(format!("{name}.tar"));
        let _ = std::fs::remove_file(&archive);
        let mut command = Command::new("podman");
        command.args(["save", "--format", "docker-archive", "-o"]).arg(&archive).arg(tag);
        run_ok(command, &format!("podman save {tag}")).await;
        Self { tag: tag.to_owned(), archive }
    }

    /// Imports the image into the node's containerd (namespace `k8s.io`, where the kubelet looks).
    pub async fn import(&self, node: &Node) {
        // Another test may be rewriting the archive meanwhile (never waits for the node's lock
        // while holding this one: no deadlock).
        let _lock = lock_images().await;
        let archive = self.archive.display().to_string();
        node.ctr(&["images", "import", &archive]).await;
        let listed = node.ctr(&["images", "list", "--quiet"]).await;
        assert!(
            listed.lines().any(|l| l == self.tag || l == format!("docker.io/{}", self.tag)),
            "{} is not among the node's images after the import:\n{listed}",
            self.tag
        );
    }
}

/// The source of the pause program (waits for SIGTERM or SIGINT), written under
/// `target/node-images`.
fn pause_source() -> PathBuf {
    let source = images_dir().join("pause-src");
    std::fs::create_dir_all(&source).expect("the pause source directory");
    std::fs::write(source.join("go.mod"), "module keyless.test/pause\n\ngo 1.22\n").expect("go.mod");
    std::fs::write(
        source.join("main.go"),
        "// The sandbox's process: waits for SIGTERM or SIGINT.\npackage main\n\nimport (\n\t\"os\"\n\t\"os/signal\"\n\t\"syscall\"\n)\n\nfunc main() {\n\tc := make(chan os.Signal, 1)\n\tsignal.Notify(c, syscall.SIGTERM, syscall.SIGINT)\n\t<-c\n}\n",
    )
    .expect("main.go");
    source
}

/// Holds `target/node-images/.lock`: one build of the node's images at a time (tests of one
/// binary, or of several processes, share the directory, its archives and the tags); waits at
/// most [`IMAGES_LOCK_DEADLINE`].
async fn lock_images() -> std::fs::File {
    lock_within(&images_dir().join(".lock"), IMAGES_LOCK_DEADLINE, "another test builds the node's images").await
}

/// How long a test waits for another's image builds (the keyless image's cold release build
/// has a bound of its own, outside this lock).
const IMAGES_LOCK_DEADLINE: Duration = Duration::from_secs(30 * 60);

fn images_dir() -> PathBuf {
    let dir = workspace_root().join("target/node-images");
    std::fs::create_dir_all(&dir).expect("target/node-images");
    dir
}

/// `go build` of `package` in `module` with `CGO_ENABLED=0` into `out`, checked static (no
/// program interpreter: the binary runs in an image with nothing else).
async fn go_build_static(module: &Path, package: &str, out: &Path) {
    let mut command = Command::new("go");
    command
        .args(["build", "-trimpath", "-buildvcs=false", "-o"])
        .arg(out)
        .arg(package)
        .current_dir(module)
        .env("CGO_ENABLED", "0")
        .env("GOFLAGS", "-mod=readonly");
    run_ok(command, &format!("go build {package} in {}", module.display())).await;
    assert!(is_static(out), "{} is not static (it has a program interpreter)", out.display());
}

/// Whether the ELF file at `path` has no `PT_INTERP` program header (needs no dynamic loader).
pub fn is_static(path: &Path) -> bool {
    let Ok(bytes) = std::fs::read(path) else { return false };
    // ELF64 little-endian only (this machine kind): e_phoff at 32, e_phentsize at 54, e_phnum at 56.
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(bytes[32..40].try_into().expect("8 bytes")) as usize;
    let (size, count) = (u16_at(54), u16_at(56));
    (0..count).all(|i| {
        let at = phoff + i * size;
        // The whole entry must be in the file (a truncated binary is no static one); PT_INTERP is 3.
        bytes.get(at..at + size.max(4)).is_some_and(|h| u32::from_le_bytes([h[0], h[1], h[2], h[3]]) != 3)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// An ELF64 little-endian header with `types` as its program headers (56 bytes each, at 64).
    fn elf(types: &[u32]) -> Vec<u8> {
        let mut bytes = vec![0u8; 64];
        bytes[..6].copy_from_slice(b"\x7fELF\x02\x01");
        bytes[32..40].copy_from_slice(&64u64.to_le_bytes());
        bytes[54..56].copy_from_slice(&56u16.to_le_bytes());
        bytes[56..58].copy_from_slice(&(types.len() as u16).to_le_bytes());
        for t in types {
            let mut header = vec![0u8; 56];
            header[..4].copy_from_slice(&t.to_le_bytes());
            bytes.extend(header);
        }
        bytes
    }

    #[test]
    fn a_binary_with_a_program_interpreter_is_not_static() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        };
        // PT_LOAD (1) and PT_NOTE (4) only: static; with PT_INTERP (3): dynamic.
        assert!(is_static(&file("static", &elf(&[1, 4, 1]))));
        assert!(!is_static(&file("dynamic", &elf(&[1, 3, 1]))));
        assert!(!is_static(&file("text", b"#!/bin/sh\necho not an ELF file\n")));
        assert!(!is_static(&dir.path().join("missing")));
        // A header naming program headers past the end of the file is not taken for static.
        let mut truncated = elf(&[1]);
        truncated.truncate(70);
        assert!(!is_static(&file("truncated", &truncated)));
    }
}
