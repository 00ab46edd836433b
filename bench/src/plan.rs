//! How big each measurement is: the full run, or `--smoke`'s tiny sizes
//! that only show every phase still works.
use std::time::Duration;

use anyhow::{Result, bail};
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub smoke: bool,
    pub reps: usize,
    /// Concurrent guests of the metadata-path measurements.
    pub load_guests: Vec<usize>,
    #[serde(serialize_with = "secs")]
    pub warmup: Duration,
    #[serde(serialize_with = "secs")]
    pub measure: Duration,
    /// What every load request asks for.
    pub url_path: &'static str,
    pub storm_guests: Vec<usize>,
    /// Guests per tenant network (one router namespace and haproxy each).
    pub guests_per_net: usize,
    pub iperf_seconds: u32,
    /// Each size is a row of its own (a fresh daemon and taps), side by side.
    pub density_taps: Vec<usize>,
    pub density_networks: usize,
    /// The `--tap-attach` modes of the density phase.
    pub density_attach: Vec<crate::world::TapAttach>,
    /// Guests flooding SYNs in the flood phase (a quiet guest is timed).
    pub flood_guests: usize,
    /// SYNs per second each flooding guest sends.
    pub flood_rate: u32,
    #[serde(serialize_with = "secs")]
    pub flood: Duration,
    /// Domains libvirt starts (paused) for the discovery phase.
    pub discovery_domains: usize,
}

fn secs<S: serde::Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(value.as_secs_f64())
}

impl Plan {
    pub fn new(smoke: bool, reps: Option<usize>) -> Result<Self> {
        let reps = reps.unwrap_or(if smoke { 1 } else { 3 });
        if reps == 0 {
            bail!("--reps must be at least 1");
        }
        Ok(if smoke {
            Self {
                smoke,
                reps,
                load_guests: vec![1, 2],
                warmup: Duration::from_millis(300),
                measure: Duration::from_secs(1),
                url_path: "/openstack/latest/meta_data.json",
                storm_guests: vec![5],
                guests_per_net: 10,
                iperf_seconds: 1,
                density_taps: vec![10],
                density_networks: 2,
                density_attach: crate::world::TapAttach::ALL.to_vec(),
                flood_guests: 2,
                flood_rate: 1000,
                flood: Duration::from_secs(6),
                discovery_domains: 5,
            }
        } else {
            Self {
                smoke,
                reps,
                load_guests: vec![1, 50, 500],
                warmup: Duration::from_secs(1),
                measure: Duration::from_secs(5),
                url_path: "/openstack/latest/meta_data.json",
                storm_guests: vec![100, 500],
                guests_per_net: 10,
                iperf_seconds: 5,
                density_taps: vec![100, 1000],
                density_networks: 100,
                density_attach: crate::world::TapAttach::ALL.to_vec(),
                flood_guests: 5,
                flood_rate: 6000,
                flood: Duration::from_secs(20),
                discovery_domains: 100,
            }
        })
    }

    /// Guests the world needs: enough for the largest load and storm.
    pub fn world_guests(&self) -> usize {
        let load = self.load_guests.iter().max().copied().unwrap_or(1);
        let storm = self.storm_guests.iter().max().copied().unwrap_or(1);
        load.max(storm).max(self.flood_guests + 1)
    }
}
