//! The peers page (`/peers`): the mesh as this node sees it, each peer with a link to its own UI.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;

use super::settings::ClusterKeyView;
use super::view::Layout;
use crate::NodeView;
use crate::i18n::Lang;
use taskmesh_core::peer::PeerInfo;
use taskmesh_core::view::ClusterStatus;

#[derive(Template, WebTemplate)]
#[template(path = "peers.html")]
pub struct PeersTemplate {
    pub layout: Layout,
    pub this: PeerRow,
    pub peers: Vec<PeerRow>,
    pub key: ClusterKeyView,
    pub mesh_up: bool,
    pub cluster: ClusterStatus,
}

impl PeersTemplate {
    /// When the mesh runs more than one version: each version with its nodes, in one sentence.
    /// All nodes of a mesh must run one version (docs/guide.md, upgrades).
    pub fn mixed_versions(&self) -> Option<String> {
        let mut versions: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
        for row in std::iter::once(&self.this).chain(&self.peers) {
            versions.entry(&row.version).or_default().push(&row.name);
        }
        (versions.len() > 1).then(|| {
            let each: Vec<String> = versions
                .iter()
                .map(|(version, names)| format!("{version}: {}", names.join(", ")))
                .collect();
            format!(
                "Mixed versions: {}. All nodes of a mesh must run one version; upgrade them together.",
                each.join("; ")
            )
        })
    }

    /// This node's Raft log: how far it goes, and what a snapshot holds.
    pub fn log_note(&self) -> String {
        let c = &self.cluster;
        let Some(last) = c.last_log else {
            return "This node's log: empty.".to_owned();
        };
        let mut note = format!("This node's log: up to entry {last}");
        if let Some(s) = c.snapshot {
            note.push_str(&format!("; snapshot at entry {s}"));
        }
        if let Some(p) = c.purged {
            note.push_str(&format!("; entries up to {p} compacted into it"));
        }
        note.push('.');
        note
    }
}

/// One node in the table.
#[derive(Debug, Clone)]
pub struct PeerRow {
    pub name: String,
    pub peer_id: String,
    pub ui_url: String,
    pub dependencies: Vec<String>,
    pub slots: String,
    pub load: String,
    pub running: u32,
    pub version: String,
    pub last_seen: String,
    pub connected: bool,
    pub addrs: Vec<String>,
}

impl PeerRow {
    pub fn of(peer: &PeerInfo) -> Self {
        let a = &peer.announcement;
        Self {
            name: a.name.clone(),
            peer_id: a.peer_id.clone(),
            ui_url: a.ui_url.clone(),
            dependencies: a.dependencies.clone(),
            slots: format!("{} of {} free", a.slots_free, a.slots_total),
            load: format!("{:.1}", a.load),
            running: a.running,
            version: a.version.clone(),
            last_seen: match peer.last_seen_ms {
                0..=999 => "just now".into(),
                ms => format!("{} s ago", ms / 1000),
            },
            connected: peer.connected,
            // The /p2p/<id> suffix repeats the peer id; the address is what matters here.
            addrs: a
                .addrs
                .iter()
                .map(|x| x.split("/p2p/").next().unwrap_or(x).to_owned())
                .collect(),
        }
    }

    /// The first characters of the peer id, for narrow tables.
    pub fn short_id(&self) -> &str {
        let start = self.peer_id.len().saturating_sub(8);
        &self.peer_id[start..]
    }
}

pub async fn view_peers_get<N: NodeView>(State(node): State<N>, lang: Lang) -> PeersTemplate {
    let view = node.peers();
    let settings = node.node_settings();
    let this = PeerRow {
        name: view.this.name.clone(),
        peer_id: view.this.peer_id.clone().unwrap_or_default(),
        ui_url: String::new(),
        dependencies: view.this.dependencies.clone(),
        slots: format!("{} slots", settings.slots),
        load: String::new(),
        running: node.active_runs().len() as u32,
        version: env!("CARGO_PKG_VERSION").into(),
        last_seen: "this node".into(),
        connected: true,
        addrs: view.this.p2p_addrs.clone(),
    };
    PeersTemplate {
        layout: Layout::new(&node, "peers", lang),
        this,
        peers: view.peers.iter().map(PeerRow::of).collect(),
        key: ClusterKeyView {
            fingerprint: view.this.key_fingerprint,
            peer_id: view.this.peer_id,
        },
        mesh_up: view.this.mesh_up,
        cluster: view.cluster,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::sample::EVIL;
    use taskmesh_core::peer::Announcement;

    fn peer(name: &str, ui: &str) -> PeerInfo {
        PeerInfo {
            announcement: Announcement {
                peer_id: "12D3KooWabcdefgh".into(),
                name: name.into(),
                version: "0.1.0".into(),
                dependencies: vec!["os=linux".into(), "gpu=nvidia".into()],
                slots_total: 8,
                slots_free: 6,
                load: 0.42,
                running: 2,
                ui_url: ui.into(),
                addrs: vec!["/ip4/198.18.0.12/tcp/7946".into()],
                seq: 1,
                cluster: None,
                start: None,
            },
            last_seen_ms: 1500,
            heard_ms: 1500,
            connected: true,
        }
    }

    fn render(peers: Vec<PeerInfo>) -> String {
        let this = PeerRow::of(&peer("me", ""));
        PeersTemplate {
            layout: Layout::named("me", "peers"),
            this,
            peers: peers.iter().map(PeerRow::of).collect(),
            key: ClusterKeyView {
                fingerprint: Some("a1b2".into()),
                peer_id: None,
            },
            mesh_up: true,
            cluster: cluster(),
        }
        .render()
        .expect("render")
    }

    fn cluster() -> ClusterStatus {
        let member = |name: &str, leader, voter, lag| taskmesh_core::view::MemberStatus {
            peer_id: format!("12D3KooW{name}"),
            name: Some(name.into()),
            voter,
            leader,
            this_node: false,
            live: true,
            applied: Some(40),
            state_hash: Some("5f0c2a91d3b4e687".into()),
            lag: Some(lag),
            drained: false,
        };
        ClusterStatus {
            cluster: Some("00000000000000ab".into()),
            role: "follower".into(),
            term: 7,
            leader: Some("12D3KooWlab-1".into()),
            members: vec![
                member("lab-1", true, true, 0),
                member(EVIL, false, true, 3),
                member("lab-3", false, false, 12),
            ],
            last_log: Some(52),
            snapshot: Some(40),
            purged: Some(30),
            cron_paused_since: None,
        }
    }

    #[test]
    fn the_cluster_shows_leader_term_roles_and_lag() {
        let html = render(vec![]);
        assert!(
            html.contains("00000000000000ab") && html.contains("term 7"),
            "{html}"
        );
        assert!(
            html.contains(">leader<") && html.contains(">learner<"),
            "{html}"
        );
        assert!(html.contains(">12<"), "the learner's lag: {html}");
        assert!(!html.contains(EVIL), "a member's name became markup");
    }

    #[test]
    fn each_member_has_a_drain_button_and_a_drained_one_says_so() {
        let html = render(vec![]);
        assert_eq!(html.matches("data-drain=").count(), 3, "{html}");
        assert!(!html.contains("data-undrain="));
        let mut page = PeersTemplate {
            layout: Layout::named("me", "peers"),
            this: PeerRow::of(&peer("me", "")),
            peers: vec![],
            key: ClusterKeyView {
                fingerprint: None,
                peer_id: None,
            },
            mesh_up: true,
            cluster: cluster(),
        };
        page.cluster.members[2].drained = true;
        let html = page.render().expect("render");
        assert!(
            html.contains(r#"data-undrain="12D3KooWlab-3" data-name="lab-3""#),
            "{html}"
        );
        assert_eq!(html.matches("data-drain=").count(), 2);
    }

    #[test]
    fn peers_link_to_their_own_ui() {
        let html = render(vec![peer("lab-2", "http://198.18.0.12:8080")]);
        assert!(html.contains("href=\"http://198.18.0.12:8080\""), "{html}");
        assert!(
            html.contains("lab-2") && html.contains("gpu=nvidia") && html.contains("6 of 8 free")
        );
        assert!(html.contains("id=\"peers-live\""));
    }

    #[test]
    fn a_mesh_of_two_versions_is_told() {
        let mut older = peer("lab-2", "");
        older.announcement.version = "0.0.9".into();
        let html = render(vec![peer("lab-3", ""), older]);
        let banner = html
            .split("id=\"mixed-versions\"")
            .nth(1)
            .expect("a banner when versions differ");
        assert!(
            banner.contains("Mixed versions: 0.0.9: lab-2; 0.1.0: me, lab-3."),
            "{banner}"
        );
        assert!(!render(vec![peer("lab-3", "")]).contains("mixed-versions"));
    }

    #[test]
    fn peer_text_is_escaped() {
        let html = render(vec![peer(EVIL, "http://x/\"><script>")]);
        assert!(!html.contains(EVIL), "a peer's name became markup");
        assert!(!html.contains("\"><script>"));
        assert!(render(vec![]).contains("No other node"));
    }
}
