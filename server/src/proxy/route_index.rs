//! Finding the first matching route without trying every route: routes
//! whose only condition is a URI prefix or exact path go into a byte trie
//! and a hash map; the rest are tried in order, but only those listed
//! before the best indexed match. The cost stays flat as routes grow.

use super::config::{Route, StrMatch};

#[derive(Default)]
pub struct RouteIndex {
    exact: super::config::FastMap<Box<str>, u32>,
    trie: Vec<Node>,
    /// Routes with other conditions, in order.
    general: Vec<u32>,
}

#[derive(Default)]
struct Node {
    /// The first route whose prefix ends here.
    first: Option<u32>,
    /// Children sorted by byte.
    children: Vec<(u8, u32)>,
}

impl RouteIndex {
    pub fn build(routes: &[Route]) -> RouteIndex {
        let mut ix = RouteIndex { trie: vec![Node::default()], ..Default::default() };
        for (i, route) in routes.iter().enumerate() {
            let i = i as u32;
            match &route.matcher {
                None => ix.insert_prefix("", i),
                Some(m) if m.is_uri_only() => match &m.uri {
                    Some(StrMatch::Prefix(p)) => ix.insert_prefix(p, i),
                    Some(StrMatch::Exact(e)) => {
                        ix.exact.entry(e.as_str().into()).or_insert(i);
                    }
                    _ => ix.general.push(i),
                },
                Some(_) => ix.general.push(i),
            }
        }
        ix
    }

    fn insert_prefix(&mut self, prefix: &str, route: u32) {
        let mut node = 0usize;
        for &b in prefix.as_bytes() {
            let next = match self.trie[node].children.binary_search_by_key(&b, |c| c.0) {
                Ok(pos) => self.trie[node].children[pos].1 as usize,
                Err(pos) => {
                    let id = self.trie.len() as u32;
                    self.trie.push(Node::default());
                    self.trie[node].children.insert(pos, (b, id));
                    id as usize
                }
            };
            node = next;
        }
        let first = &mut self.trie[node].first;
        *first = Some(first.map_or(route, |f| f.min(route)));
    }

    /// The lowest-numbered indexed route matching `path`.
    fn indexed(&self, path: &str) -> Option<u32> {
        let mut best = self.exact.get(path).copied();
        let mut node = 0usize;
        let mut consider = |r: Option<u32>| {
            if let Some(r) = r {
                best = Some(best.map_or(r, |b| b.min(r)));
            }
        };
        consider(self.trie[0].first);
        for &b in path.as_bytes() {
            match self.trie[node].children.binary_search_by_key(&b, |c| c.0) {
                Ok(pos) => node = self.trie[node].children[pos].1 as usize,
                Err(_) => break,
            }
            consider(self.trie[node].first);
        }
        best
    }

    /// The first route, in declaration order, for which `matches` holds.
    pub fn find<'r>(&self, routes: &'r [Route], path: &str, matches: impl Fn(&Route) -> bool) -> Option<&'r Route> {
        let indexed = self.indexed(path);
        for &g in &self.general {
            if indexed.is_some_and(|i| i < g) {
                break;
            }
            if matches(&routes[g as usize]) {
                return Some(&routes[g as usize]);
            }
        }
        indexed.map(|i| &routes[i as usize])
    }
}
