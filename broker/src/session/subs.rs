//! A session's subscriptions, filter -> options ([`SubscriptionMap`]). Most
//! sessions hold one or a few (a device subscribes to its own topics), and
//! a hash map's smallest table (four slots plus control bytes, about 190
//! bytes with one subscription, and 48 bytes in the session besides) costs
//! more than its entries. So up to [`FEW`] subscriptions are a vector,
//! grown one entry at a time and searched in order (a handful of string
//! compares, on SUBSCRIBE and UNSUBSCRIBE only: delivery goes through the
//! router, not this map); beyond, a boxed hash map, so a session with
//! thousands of filters keeps constant-time subscribe and unsubscribe.

use std::collections::HashMap;

/// Most subscriptions kept in the vector.
const FEW: usize = 8;

/// Filter -> `V`, with the parts of `HashMap`'s interface sessions use.
#[derive(Debug, Clone)]
pub struct SubscriptionMap<V>(Repr<V>);

#[derive(Debug, Clone)]
enum Repr<V> {
    Few(Vec<(String, V)>),
    // Boxed on purpose: the map inline (48 bytes) would double the size of
    // every session's `Repr`, most of which hold a few subscriptions.
    #[allow(clippy::box_collection)]
    Many(Box<HashMap<String, V>>),
}

impl<V> Default for SubscriptionMap<V> {
    fn default() -> Self {
        SubscriptionMap::new()
    }
}

impl<V> SubscriptionMap<V> {
    /// Empty, allocating nothing.
    pub fn new() -> Self {
        SubscriptionMap(Repr::Few(Vec::new()))
    }

    pub fn len(&self) -> usize {
        match &self.0 {
            Repr::Few(v) => v.len(),
            Repr::Many(m) => m.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, filter: &str) -> Option<&V> {
        match &self.0 {
            Repr::Few(v) => v.iter().find(|(f, _)| f == filter).map(|(_, r)| r),
            Repr::Many(m) => m.get(filter),
        }
    }

    pub fn contains_key(&self, filter: &str) -> bool {
        self.get(filter).is_some()
    }

    /// Sets `filter`'s value; returns the one it replaces.
    pub fn insert(&mut self, filter: String, value: V) -> Option<V> {
        let v = match &mut self.0 {
            Repr::Many(m) => return m.insert(filter, value),
            Repr::Few(v) => v,
        };
        if let Some((_, old)) = v.iter_mut().find(|(f, _)| *f == filter) {
            return Some(std::mem::replace(old, value));
        }
        if v.len() < FEW {
            // One more slot only: a vector's first growth is four.
            v.reserve_exact(1);
            v.push((filter, value));
            return None;
        }
        let mut m: HashMap<String, V> = v.drain(..).collect();
        m.insert(filter, value);
        self.0 = Repr::Many(Box::new(m));
        None
    }

    /// Removes `filter`; returns its value.
    pub fn remove(&mut self, filter: &str) -> Option<V> {
        match &mut self.0 {
            Repr::Few(v) => {
                let i = v.iter().position(|(f, _)| f == filter)?;
                let (_, old) = v.swap_remove(i);
                if v.is_empty() {
                    *v = Vec::new();
                }
                Some(old)
            }
            Repr::Many(m) => m.remove(filter),
        }
    }

    /// (filter, value), in no particular order.
    pub fn iter(&self) -> Iter<'_, V> {
        match &self.0 {
            Repr::Few(v) => Iter::Few(v.iter()),
            Repr::Many(m) => Iter::Many(m.iter()),
        }
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> + '_ {
        self.iter().map(|(f, _)| f)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.iter().map(|(_, r)| r)
    }

    /// Takes every entry out, leaving the map empty (and unallocated).
    pub fn drain(&mut self) -> std::vec::IntoIter<(String, V)> {
        match std::mem::take(&mut self.0) {
            Repr::Few(v) => v.into_iter(),
            Repr::Many(m) => m.into_iter().collect::<Vec<_>>().into_iter(),
        }
    }
}

impl<V> Default for Repr<V> {
    fn default() -> Self {
        Repr::Few(Vec::new())
    }
}

/// [`SubscriptionMap::iter`].
#[derive(Debug)]
pub enum Iter<'a, V> {
    Few(std::slice::Iter<'a, (String, V)>),
    Many(std::collections::hash_map::Iter<'a, String, V>),
}

impl<'a, V> Iterator for Iter<'a, V> {
    type Item = (&'a String, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Iter::Few(i) => i.next().map(|(f, r)| (f, r)),
            Iter::Many(i) => i.next(),
        }
    }
}

impl<'a, V> IntoIterator for &'a SubscriptionMap<V> {
    type Item = (&'a String, &'a V);
    type IntoIter = Iter<'a, V>;

    fn into_iter(self) -> Iter<'a, V> {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(m: &SubscriptionMap<u32>) -> Vec<(String, u32)> {
        let mut v: Vec<(String, u32)> = m.iter().map(|(f, r)| (f.clone(), *r)).collect();
        v.sort();
        v
    }

    #[test]
    fn behaves_as_a_map_below_and_above_the_switch() {
        let mut m = SubscriptionMap::new();
        let mut model = std::collections::BTreeMap::new();
        // Past FEW and back: inserts, replacements, removals, misses.
        for round in 0..3u32 {
            for i in 0..(FEW as u32 * 2) {
                let f = format!("t/{}", i % (FEW as u32 + 3));
                assert_eq!(
                    m.insert(f.clone(), i + round),
                    model.insert(f.clone(), i + round)
                );
                assert_eq!(m.len(), model.len());
                assert_eq!(m.get(&f), model.get(&f));
            }
            for i in (0..FEW as u32 + 4).step_by(2) {
                let f = format!("t/{i}");
                assert_eq!(m.remove(&f), model.remove(&f));
                assert!(!m.contains_key(&f));
            }
            let want: Vec<(String, u32)> = model.iter().map(|(f, r)| (f.clone(), *r)).collect();
            assert_eq!(sorted(&m), want);
            assert_eq!(m.keys().count(), model.len());
            assert_eq!(m.values().count(), model.len());
            assert_eq!((&m).into_iter().count(), model.len());
        }
        let mut drained: Vec<(String, u32)> = m.drain().collect();
        drained.sort();
        assert_eq!(drained, model.into_iter().collect::<Vec<_>>());
        assert!(m.is_empty());
        assert!(matches!(&m.0, Repr::Few(v) if v.capacity() == 0));
    }

    #[test]
    fn one_subscription_holds_one_slot() {
        let mut m = SubscriptionMap::new();
        assert!(
            matches!(&m.0, Repr::Few(v) if v.capacity() == 0),
            "nothing allocated"
        );
        m.insert("device/1/cmd".to_string(), 1u32);
        assert!(matches!(&m.0, Repr::Few(v) if v.capacity() == 1));
        m.remove("device/1/cmd");
        assert!(
            matches!(&m.0, Repr::Few(v) if v.capacity() == 0),
            "given back"
        );
        for i in 0..=FEW {
            m.insert(format!("f/{i}"), 0);
        }
        assert!(matches!(&m.0, Repr::Many(_)), "a hash map past {FEW}");
        assert_eq!(
            std::mem::size_of::<SubscriptionMap<u32>>(),
            std::mem::size_of::<Vec<u8>>()
        );
    }
}
