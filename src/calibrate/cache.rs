//! Bounded cache of residual-stream values keyed by (chunk, plan prefix).
//!
//! The stream entering sub-block `p` depends only on the actions at positions `< p`, so a
//! candidate can start from the stream its longest cached prefix produced. Keys are full
//! prefixes (no hashing shortcuts: a collision would silently change D). Beyond the memory
//! bound the least recently used entries are dropped and recomputed when needed again.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ort::value::DynValue;

use crate::action::Action;

type Key = (usize, Vec<Action>);

struct Entry {
    value: Arc<DynValue>,
    bytes: u64,
    tick: u64,
}

pub struct StreamCache {
    map: HashMap<Key, Entry>,
    lru: BTreeMap<u64, Key>,
    tick: u64,
    bytes: u64,
    limit: u64,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
}

impl StreamCache {
    pub fn new(limit: u64) -> StreamCache {
        StreamCache {
            map: HashMap::new(),
            lru: BTreeMap::new(),
            tick: 0,
            bytes: 0,
            limit,
            hits: 0,
            misses: 0,
            evictions: 0,
        }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The longest cached prefix of `actions` for `chunk`: its length `p` (the position to
    /// resume at) and the stream entering `p`. Prefixes ending in a skip are never stored (the
    /// stream equals the one before the skip), so they are not looked up.
    pub fn longest_prefix(
        &mut self,
        chunk: usize,
        actions: &[Action],
    ) -> Option<(usize, Arc<DynValue>)> {
        for p in (1..=actions.len()).rev() {
            if actions[p - 1] == Action::Skip {
                continue;
            }
            let key = (chunk, actions[..p].to_vec());
            if let Some(e) = self.map.get_mut(&key) {
                self.lru.remove(&e.tick);
                self.tick += 1;
                e.tick = self.tick;
                self.lru.insert(self.tick, key);
                self.hits += 1;
                return Some((p, e.value.clone()));
            }
        }
        self.misses += 1;
        None
    }

    /// Stores the stream after `prefix` (whose last action ran a sub-block), evicting least
    /// recently used entries to stay within the bound. A value larger than the bound is not kept.
    pub fn insert(&mut self, chunk: usize, prefix: &[Action], value: Arc<DynValue>, bytes: u64) {
        if bytes > self.limit {
            return;
        }
        let key = (chunk, prefix.to_vec());
        if let Some(old) = self.map.remove(&key) {
            self.lru.remove(&old.tick);
            self.bytes -= old.bytes;
        }
        while self.bytes + bytes > self.limit {
            let Some((_, victim)) = self.lru.pop_first() else {
                break;
            };
            if let Some(e) = self.map.remove(&victim) {
                self.bytes -= e.bytes;
                self.evictions += 1;
            }
        }
        self.tick += 1;
        self.lru.insert(self.tick, key.clone());
        self.map.insert(
            key,
            Entry {
                value,
                bytes,
                tick: self.tick,
            },
        );
        self.bytes += bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ort::value::Tensor;
    use Action::{Keep, Reuse, Skip};

    fn value() -> Arc<DynValue> {
        Arc::new(
            Tensor::from_array(([1usize], vec![0f32]))
                .unwrap()
                .into_dyn(),
        )
    }

    #[test]
    fn finds_longest_prefix_and_evicts_lru() {
        let mut c = StreamCache::new(100);
        c.insert(0, &[Keep], value(), 40);
        c.insert(0, &[Keep, Keep], value(), 40);
        // [Keep, Skip, Keep]: longest stored prefix is [Keep] (a skip-ending prefix is its twin).
        assert_eq!(c.longest_prefix(0, &[Keep, Skip, Keep]).unwrap().0, 1);
        assert_eq!(c.longest_prefix(0, &[Keep, Keep, Keep]).unwrap().0, 2);
        assert!(c.longest_prefix(1, &[Keep, Keep]).is_none());
        assert!(c.longest_prefix(0, &[Reuse(0), Keep]).is_none());
        // [Keep] was used last; inserting a third entry evicts [Keep, Keep].
        c.longest_prefix(0, &[Keep]);
        c.insert(0, &[Skip, Keep], value(), 40);
        assert_eq!(c.evictions, 1);
        assert_eq!(c.longest_prefix(0, &[Keep, Keep]).unwrap().0, 1);
        assert_eq!(c.bytes(), 80);
        // Too large to keep at all.
        c.insert(0, &[Keep, Keep, Keep], value(), 101);
        assert_eq!(c.len(), 2);
    }
}
