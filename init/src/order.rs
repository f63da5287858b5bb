//! Service start and stop order from `depends_on`.
//!
//! Start order is a topological order that is *stable*: among services whose
//! dependencies are all started, the one listed first in the manifest goes
//! first. So a manifest without `depends_on` starts in the order it is
//! written, and adding one edge moves as little as possible. Stop order is the
//! exact reverse, so a service is stopped before everything it depends on.

/// Why no order exists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    #[error("{service} depends on unknown service {dependency:?}")]
    UnknownDependency { service: String, dependency: String },
    #[error("dependency cycle: {}", cycle.join(" -> "))]
    Cycle { cycle: Vec<String> },
}

/// One node of the dependency graph: a name and the names it depends on.
pub trait Node {
    fn name(&self) -> &str;
    fn depends_on(&self) -> &[String];
}

/// Indexes into `nodes`, dependencies before dependents, ties broken by
/// position in `nodes`. O(n²) on purpose: an appliance has tens of services,
/// and the simple loop is easy to prove stable.
pub fn start_order<N: Node>(nodes: &[N]) -> Result<Vec<usize>, OrderError> {
    // Resolve names to indexes once.
    let mut deps: Vec<Vec<usize>> = Vec::with_capacity(nodes.len());
    for node in nodes {
        let mut resolved = Vec::with_capacity(node.depends_on().len());
        for dep in node.depends_on() {
            match nodes.iter().position(|n| n.name() == dep) {
                Some(i) => resolved.push(i),
                None => {
                    return Err(OrderError::UnknownDependency {
                        service: node.name().to_owned(),
                        dependency: dep.clone(),
                    });
                }
            }
        }
        deps.push(resolved);
    }

    let mut placed = vec![false; nodes.len()];
    let mut order = Vec::with_capacity(nodes.len());
    while order.len() < nodes.len() {
        let next = (0..nodes.len()).find(|&i| {
            !placed.get(i).copied().unwrap_or(true)
                && deps
                    .get(i)
                    .is_some_and(|d| d.iter().all(|&j| placed.get(j).copied().unwrap_or(false)))
        });
        match next {
            Some(i) => {
                if let Some(p) = placed.get_mut(i) {
                    *p = true;
                }
                order.push(i);
            }
            None => {
                return Err(OrderError::Cycle {
                    cycle: find_cycle(nodes, &deps, &placed),
                });
            }
        }
    }
    Ok(order)
}

/// The reverse of [`start_order`].
pub fn stop_order<N: Node>(nodes: &[N]) -> Result<Vec<usize>, OrderError> {
    let mut order = start_order(nodes)?;
    order.reverse();
    Ok(order)
}

/// Names one cycle among the unplaced nodes, closed (first name repeated at
/// the end), starting from the first unplaced node in manifest order.
fn find_cycle<N: Node>(nodes: &[N], deps: &[Vec<usize>], placed: &[bool]) -> Vec<String> {
    // Every unplaced node has at least one unplaced dependency (otherwise it
    // would have been placed), so walking "first unplaced dependency" from
    // any unplaced node must revisit a node within n steps.
    let name = |i: usize| {
        nodes
            .get(i)
            .map(|n| n.name().to_owned())
            .unwrap_or_default()
    };
    let Some(start) = placed.iter().position(|p| !p) else {
        return Vec::new();
    };
    let mut path: Vec<usize> = vec![start];
    let mut current = start;
    for _ in 0..=nodes.len() {
        let next = deps.get(current).and_then(|d| {
            d.iter()
                .copied()
                .find(|&j| !placed.get(j).copied().unwrap_or(true))
        });
        let Some(next) = next else { break };
        if let Some(pos) = path.iter().position(|&p| p == next) {
            let mut cycle: Vec<String> = path.iter().skip(pos).map(|&i| name(i)).collect();
            cycle.push(name(next));
            return cycle;
        }
        path.push(next);
        current = next;
    }
    path.iter().map(|&i| name(i)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct N(&'static str, Vec<String>);
    impl Node for N {
        fn name(&self) -> &str {
            self.0
        }
        fn depends_on(&self) -> &[String] {
            &self.1
        }
    }
    fn n(name: &'static str, deps: &[&str]) -> N {
        N(name, deps.iter().map(|d| d.to_string()).collect())
    }
    fn names(nodes: &[N], order: &[usize]) -> Vec<&'static str> {
        order.iter().map(|&i| nodes[i].0).collect()
    }

    #[test]
    fn orders() {
        let cases: Vec<(Vec<N>, Vec<&str>)> = vec![
            (vec![], vec![]),
            (
                vec![n("a", &[]), n("b", &[]), n("c", &[])],
                vec!["a", "b", "c"],
            ),
            (vec![n("web", &["db"]), n("db", &[])], vec!["db", "web"]),
            (
                vec![
                    n("web", &["api"]),
                    n("api", &["db", "cache"]),
                    n("cache", &[]),
                    n("db", &[]),
                    n("x", &[]),
                ],
                vec!["cache", "db", "api", "web", "x"],
            ),
            // Diamond: d after b and c, b before c as written.
            (
                vec![
                    n("d", &["b", "c"]),
                    n("b", &["a"]),
                    n("c", &["a"]),
                    n("a", &[]),
                ],
                vec!["a", "b", "c", "d"],
            ),
        ];
        for (nodes, want) in cases {
            let order = start_order(&nodes).unwrap();
            assert_eq!(names(&nodes, &order), want);
            let mut rev = want.clone();
            rev.reverse();
            assert_eq!(names(&nodes, &stop_order(&nodes).unwrap()), rev);
        }
    }

    #[test]
    fn cycles_are_named() {
        let nodes = vec![n("x", &[]), n("a", &["b"]), n("b", &["c"]), n("c", &["a"])];
        assert_eq!(
            start_order(&nodes),
            Err(OrderError::Cycle {
                cycle: vec!["a".into(), "b".into(), "c".into(), "a".into()]
            })
        );
        let nodes = vec![n("self", &["self"])];
        assert_eq!(
            start_order(&nodes).unwrap_err().to_string(),
            "dependency cycle: self -> self"
        );
        // A node hanging off a cycle is not part of the named cycle.
        let nodes = vec![n("top", &["a"]), n("a", &["b"]), n("b", &["a"])];
        assert_eq!(
            start_order(&nodes).unwrap_err().to_string(),
            "dependency cycle: a -> b -> a"
        );
    }

    #[test]
    fn unknown_dependency() {
        let nodes = vec![n("web", &["db"])];
        assert_eq!(
            start_order(&nodes).unwrap_err().to_string(),
            "web depends on unknown service \"db\""
        );
    }
}
