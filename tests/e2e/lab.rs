//! A lab of several hosts on one machine: network namespaces that the test
//! makes itself, each with its own address on a bridge in the test's own
//! namespace, so traffic between "hosts" really crosses interfaces (veth
//! pairs and a bridge), and a host can be taken off the network.
//!
//! ```text
//!   test process, control plane: 10.99.N.1 (bridge mgbrN)
//!     ├── veth ── host 0 (netns mgNh0): 10.99.N.2
//!     ├── veth ── host 1 (netns mgNh1): 10.99.N.3
//!     └── ...
//! ```
//!
//! Making namespaces needs root (CAP_NET_ADMIN) and iproute2; where they
//! cannot be made, [`Lab::new`] says why and the test skips.

use std::process::{Child, Command, Stdio};

/// Environment variables that turn [`lab_app`] into a service (its name and address).
const APP_NAME: &str = "MESHGATE_LAB_APP";
const APP_ADDR: &str = "MESHGATE_LAB_ADDR";

pub struct Lab {
    /// N: the bridge is `mgbrN`, the subnet 10.99.N.0/24.
    n: u32,
    hosts: usize,
    /// Processes started in the hosts, stopped on drop.
    children: Vec<Child>,
}

impl Lab {
    /// A lab of `hosts` hosts, or `None` (with the reason printed) where
    /// network namespaces cannot be made here.
    pub fn new(hosts: usize) -> Option<Lab> {
        // The bridge's name is the lab's lock: creating a link is atomic, so
        // labs of tests running side by side (or left by a killed run) never share one.
        let mut n = 0;
        loop {
            match quiet(&["link", "add", &format!("mgbr{n}"), "type", "bridge"]) {
                Ok(()) => break,
                Err(e) if e.contains("exists") && n < 250 => n += 1,
                Err(why) => {
                    eprintln!("SKIPPED: cannot make network namespaces here (needs root and iproute2): {why}");
                    return None;
                }
            }
        }
        let mut lab = Lab { n, hosts: 0, children: Vec::new() };
        let bridge = format!("mgbr{n}");
        ip(&["addr", "add", &format!("10.99.{n}.1/24"), "dev", &bridge]);
        ip(&["link", "set", &bridge, "up"]);
        for h in 0..hosts {
            let (ns, veth) = (lab.netns(h), lab.veth(h));
            ip(&["netns", "add", &ns]);
            lab.hosts = h + 1;
            ip(&["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
            ip(&["link", "set", &veth, "master", &bridge, "up"]);
            ip(&["-n", &ns, "addr", "add", &format!("{}/24", lab.addr(h)), "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        Some(lab)
    }

    /// The address of the test's own side (the bridge): where the control plane listens.
    pub fn gateway_addr(&self) -> String {
        format!("10.99.{}.1", self.n)
    }

    /// Host `h`'s address.
    pub fn addr(&self, h: usize) -> String {
        format!("10.99.{}.{}", self.n, h + 2)
    }

    fn netns(&self, h: usize) -> String {
        format!("mg{}h{h}", self.n)
    }

    fn veth(&self, h: usize) -> String {
        format!("mg{}v{h}", self.n)
    }

    /// `program` to run on host `h`.
    pub fn command(&self, h: usize, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns(h), program]);
        cmd
    }

    /// Keeps `child` (started on a host) to be killed when the lab goes.
    pub fn adopt(&mut self, child: Child) {
        self.children.push(child);
    }

    /// An HTTP service on host `h` at `addr` that answers with `name` (the
    /// e2e binary itself, running [`lab_app`]); stops with the lab.
    pub fn app(&mut self, h: usize, name: &str, addr: &str) {
        let exe = std::env::current_exe().expect("the test binary");
        let mut child = self
            .command(h, exe.to_str().expect("utf-8 path"))
            .args(["lab::lab_app", "--exact", "--ignored", "--nocapture"])
            .env(APP_NAME, name)
            .env(APP_ADDR, addr)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the lab app");
        let lines = crate::support::line_reader(child.stdout.take().expect("stdout"));
        crate::support::wait_line(&lines, "lab app ready ", &mut Vec::new());
        self.adopt(child);
    }

    /// Takes host `h` off the network (its link goes down: packets to it are dropped).
    pub fn unplug(&self, h: usize) {
        ip(&["link", "set", &self.veth(h), "down"]);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for h in 0..self.hosts {
            // The veth pair goes first and explicitly: a namespace outlives its
            // name while closed sockets in it still retransmit to an unplugged peer.
            let _ = quiet(&["link", "del", &self.veth(h)]);
            let _ = quiet(&["netns", "del", &self.netns(h)]);
        }
        let _ = quiet(&["link", "del", &format!("mgbr{}", self.n)]);
    }
}

fn ip(args: &[&str]) {
    if let Err(e) = quiet(args) {
        panic!("ip {}: {e}", args.join(" "));
    }
}

fn quiet(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).trim().to_string()) }
}

/// Not a test: the service [`Lab::app`] runs inside a host's namespace
/// (this binary, started again there). Serves until its stdin closes.
#[test]
#[ignore = "started by the multi-host tests inside a network namespace"]
fn lab_app() {
    let (Ok(name), Ok(addr)) = (std::env::var(APP_NAME), std::env::var(APP_ADDR)) else { return };
    let app = crate::upstream::Upstream::start_at(&name, &addr);
    println!("lab app ready {}", app.addr);
    // The lab holds stdin; when it goes (or dies), so does the app.
    let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
}
