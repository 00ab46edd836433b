//! Setting up hundreds of namespaces runs `ip` and the CLI thousands of
//! times; a few threads at once cut the setup time without flooding the
//! daemon or the kernel's rtnl lock.
use std::sync::Mutex;

use anyhow::Result;

const THREADS: usize = 4;

/// `f` over `items` on a few threads; results in input order, the first
/// error wins (the others still finish, so nothing is half-built).
pub fn map<I, T, F>(items: I, f: F) -> Result<Vec<T>>
where
    I: IntoIterator<Item = usize>,
    T: Send,
    F: Fn(usize) -> Result<T> + Sync,
{
    let queue: Mutex<std::vec::IntoIter<usize>> =
        Mutex::new(items.into_iter().collect::<Vec<_>>().into_iter());
    let results: Mutex<Vec<(usize, Result<T>)>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..THREADS {
            scope.spawn(|| {
                loop {
                    let Some(item) = queue.lock().expect("queue lock").next() else {
                        break;
                    };
                    let result = f(item);
                    results.lock().expect("results lock").push((item, result));
                }
            });
        }
    });
    let mut results = results.into_inner().expect("results lock");
    results.sort_by_key(|(item, _)| *item);
    results.into_iter().map(|(_, result)| result).collect()
}
