//! The layering rule, checked. The crates import only the crates below them (Cargo makes a
//! cycle an error, and this check keeps edges from pointing sideways or up), and inside this
//! crate each module imports only the modules below it, in [`NODE_MODULES`] order.
//! docs/ARCHITECTURE.md explains the layers.

/// The workspace's crates, lowest first, each with the taskmesh crates it may depend on.
const CRATES: &[(&str, &[&str])] = &[
    ("core", &[]),
    ("mesh", &["taskmesh-core"]),
    ("store", &["taskmesh-core"]),
    (
        "consensus",
        &["taskmesh-core", "taskmesh-mesh", "taskmesh-store"],
    ),
    ("ui", &["taskmesh-core"]),
    (
        "node",
        &[
            "taskmesh-core",
            "taskmesh-mesh",
            "taskmesh-store",
            "taskmesh-consensus",
            "taskmesh-ui",
        ],
    ),
];

/// This crate's own modules, lowest first: a module may use the ones before it (and the lower
/// crates, re-exported at the root), never one after it.
const NODE_MODULES: &[&str] = &[
    "process_setup",
    "http_client",
    "cluster_key",
    "config",
    "metrics",
    "service",
    "logs",
    "reports",
    "sink",
    "ledger",
    "notify",
    "executor",
    "scheduler",
    "caller",
    "handle",
    "history",
    "api",
    "cli",
    "server",
];

/// The lower crates as this crate's root names them; any module may use them.
const LOWER: &[&str] = &[
    "consensus",
    "error_text",
    "events",
    "mesh",
    "model",
    "private_files",
    "store",
    "ui",
];

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};

    use super::*;

    fn sources(path: &Path, out: &mut Vec<PathBuf>) {
        if path.is_dir() {
            for entry in std::fs::read_dir(path).expect("read dir") {
                sources(&entry.expect("entry").path(), out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path.to_owned());
        }
    }

    /// The `crate::<module>` names used in code (comments aside) under `path`.
    fn uses(path: &Path) -> BTreeSet<String> {
        let mut files = Vec::new();
        sources(path, &mut files);
        let mut used = BTreeSet::new();
        for file in files {
            let text = std::fs::read_to_string(&file).expect("read source");
            for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
                for (at, _) in line.match_indices("crate::") {
                    let rest = &line[at + "crate::".len()..];
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    let before = line[..at].chars().next_back();
                    // `taskmesh_crate::` or `$crate::` are other paths.
                    if !name.is_empty()
                        && !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$')
                    {
                        used.insert(name);
                    }
                }
            }
        }
        used
    }

    #[test]
    fn each_module_uses_only_the_modules_below_it() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut wrong = Vec::new();
        for (rank, module) in NODE_MODULES.iter().enumerate() {
            let file = src.join(format!("{module}.rs"));
            let path = if file.exists() {
                file
            } else {
                src.join(module)
            };
            if !path.exists() {
                wrong.push(format!("{module}: listed in NODE_MODULES but not in src/"));
                continue;
            }
            for used in uses(&path) {
                if used == *module || LOWER.contains(&used.as_str()) {
                    continue;
                }
                match NODE_MODULES.iter().position(|m| *m == used) {
                    Some(at) if at < rank => {}
                    Some(_) => wrong.push(format!("{module} uses {used}, a module above it")),
                    None => wrong.push(format!("{module} uses {used}, which is not in the layers")),
                }
            }
        }
        for entry in std::fs::read_dir(&src).expect("src") {
            let path = entry.expect("entry").path();
            let name = path
                .file_stem()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            if !["lib", "main", "layers"].contains(&name.as_str())
                && !NODE_MODULES.contains(&name.as_str())
            {
                wrong.push(format!("{name}: a module missing from NODE_MODULES"));
            }
        }
        assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
    }

    #[test]
    fn each_crate_depends_only_on_the_crates_below_it() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut wrong = Vec::new();
        for (dir, allowed) in CRATES {
            let manifest =
                std::fs::read_to_string(root.join(dir).join("Cargo.toml")).expect("manifest");
            let mut section = "";
            for line in manifest.lines().map(str::trim) {
                if line.starts_with('[') {
                    section = line;
                    continue;
                }
                let dependency = line.split(['.', ' ', '=']).next().unwrap_or("");
                if section.contains("dependencies")
                    && dependency.starts_with("taskmesh")
                    && !allowed.contains(&dependency)
                {
                    wrong.push(format!("{dir} depends on {dependency} ({section})"));
                }
            }
        }
        assert!(
            wrong.is_empty(),
            "crate layering broken:\n{}",
            wrong.join("\n")
        );
    }

    #[test]
    fn the_check_sees_an_upward_use() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(
            dir.path().join("m.rs"),
            "// crate::server in a comment is no use\nuse crate::server::start;\nlet x = taskmesh_ui::y;\n",
        )
        .expect("write");
        assert_eq!(uses(dir.path()), BTreeSet::from(["server".to_string()]));
    }
}
