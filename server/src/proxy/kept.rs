//! Objects that outlive a snapshot while some snapshot uses them: endpoint
//! health, cluster counters, JWKS fetchers, rate-limit buckets. A
//! recompile finds the live object under its key instead of starting over;
//! once the last snapshot using one is gone, so is the object.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, Weak};

pub struct Kept<K, T> {
    map: Mutex<HashMap<K, Weak<T>>>,
}

impl<K, T> Default for Kept<K, T> {
    fn default() -> Self {
        Kept { map: Mutex::new(HashMap::new()) }
    }
}

impl<K: Eq + Hash, T> Kept<K, T> {
    /// The live object under `key`, or a new one from `make`; `true` when it is new.
    pub fn get_or(&self, key: K, make: impl FnOnce() -> T) -> (Arc<T>, bool) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(live) = map.get(&key).and_then(Weak::upgrade) {
            return (live, false);
        }
        let made = Arc::new(make());
        map.insert(key, Arc::downgrade(&made));
        (made, true)
    }

    /// Forgets the keys whose objects are gone.
    pub fn prune(&self) {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).retain(|_, w| w.strong_count() > 0);
    }
}
