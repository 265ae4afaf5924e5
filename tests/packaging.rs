//! What `packaging/` ships holds together: the Kubernetes config is a valid config, the
//! manifests probe the admin listener it opens, and the Debian package builds with the files
//! an operator expects. (`scripts/e2e` installs the package with `dpkg -i`, checks its config
//! with the installed binary, and builds and runs the OCI image.)

use edgegate::config::Config;
use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).expect(rel)
}

#[test]
fn the_kubernetes_config_is_valid_and_the_manifests_probe_its_admin_listener() {
    std::env::set_var(
        "EDGEGATE_JWT_SECRET",
        "packaging-test-secret-0123456789abcdef",
    );
    let config = Config::load(&root().join("packaging/k8s/edgegate.toml")).expect("valid");
    edgegate::runtime::Runtime::build(&config).expect("builds");
    let admin_port = config
        .admin
        .listen
        .rsplit(':')
        .next()
        .expect("admin port")
        .to_string();
    assert!(
        config.admin.listen.starts_with("0.0.0.0:"),
        "probes come from the kubelet"
    );
    let deployment = read("packaging/k8s/deployment.yaml");
    assert!(deployment.contains(&format!("containerPort: {admin_port}")));
    assert!(deployment.contains("path: /readyz, port: admin"));
    assert!(deployment.contains("path: /healthz, port: admin"));
    // The pod's grace covers the drain and the grace period of the config.
    let grace: u64 = deployment
        .lines()
        .find_map(|l| l.trim().strip_prefix("terminationGracePeriodSeconds: "))
        .and_then(|v| v.parse().ok())
        .expect("terminationGracePeriodSeconds");
    let s = &config.server;
    assert!(
        grace > s.drain_delay_secs + s.grace_period_seconds + s.graceful_shutdown_timeout_seconds,
        "the kubelet must not kill the pod before it drained"
    );
    let pdb = read("packaging/k8s/pdb.yaml");
    assert!(pdb.contains("kind: PodDisruptionBudget") && pdb.contains("maxUnavailable: 1"));
    let kustomization = read("packaging/k8s/kustomization.yaml");
    for f in [
        "deployment.yaml",
        "service.yaml",
        "pdb.yaml",
        "edgegate.toml",
    ] {
        assert!(kustomization.contains(f), "{f} in the kustomization");
    }
}

#[test]
fn the_debian_package_holds_the_binary_unit_config_and_user_setup() {
    let out = std::env::temp_dir().join(format!("edgegate-deb-{}", std::process::id()));
    let built = Command::new(root().join("packaging/deb/build"))
        .args([
            "--binary",
            env!("CARGO_BIN_EXE_edgegate"),
            "--compress",
            "none",
            "--out",
        ])
        .arg(&out)
        .output()
        .expect("packaging/deb/build runs");
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let deb = String::from_utf8_lossy(&built.stdout).trim().to_string();
    let listing = Command::new("dpkg-deb")
        .args(["-c", &deb])
        .output()
        .expect("dpkg-deb");
    let files = String::from_utf8_lossy(&listing.stdout);
    for f in [
        "./usr/bin/edgegate",
        "./lib/systemd/system/edgegate.service",
        "./etc/edgegate/edgegate.toml",
        "./usr/share/edgegate/prometheus/alerts.yml",
        "./usr/share/edgegate/grafana/edgegate.json",
    ] {
        assert!(files.contains(f), "{f} in the package:\n{files}");
    }
    let field = |name: &str| {
        let o = Command::new("dpkg-deb")
            .args(["-f", &deb, name])
            .output()
            .expect("dpkg-deb -f");
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    assert_eq!(field("Package"), "edgegate");
    assert_eq!(field("Version"), env!("CARGO_PKG_VERSION"));
    let info = Command::new("dpkg-deb")
        .args(["-I", &deb, "postinst"])
        .output()
        .expect("postinst");
    assert!(String::from_utf8_lossy(&info.stdout).contains("adduser --system"));
    let unit = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "dpkg-deb --fsys-tarfile {deb} | tar -xO ./lib/systemd/system/edgegate.service"
        ))
        .output()
        .expect("unit");
    let unit = String::from_utf8_lossy(&unit.stdout);
    assert!(unit.contains("ExecStart=/usr/bin/edgegate run"));
    assert!(unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    assert!(unit.contains("User=edgegate") && !unit.contains("DynamicUser"));
    let _ = std::fs::remove_dir_all(&out);
}
