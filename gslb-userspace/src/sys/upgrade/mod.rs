//! Upgrading (or downgrading) the pinned data plane in place: what the
//! pinned state is (`GSLB_META`: the program's version, each map's layout
//! version), whether this build's `steer` can take over its maps, and the
//! atomic replacement of the program on every pinned XDP link.
//!
//! A map whose layout version and shape (type, key and value size) match
//! this build's is kept as it is: recorded flows, tables, previous owners
//! and counters carry on. A map at a layout version this build has a
//! migration from is copied into a new map entry by entry (`migrate`). Any
//! other difference refuses the upgrade before anything is changed, saying
//! what to do instead.

pub mod migrate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use aya::maps::{HashMap, Map, MapData};
use aya::programs::{links::FdLink, links::PinnedLink, xdp::XdpLink, Xdp};
use gslb_common::{names, MetaKey, MetaValue, LAYOUTS};
use tracing::info;

use self::migrate::Migration;
use super::attach;
use super::OBJECT;

/// The `GSLB_META` key of the program's version.
const PROGRAM_KEY: &str = "program";

/// This build's program version: the package version and the start of the
/// XDP object's SHA-256, so two builds of one version still differ.
pub fn this_version() -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, OBJECT);
    let hex: String = digest.as_ref()[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}+{hex}", env!("CARGO_PKG_VERSION"))
}

/// What `GSLB_META` says about the pinned state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PinnedMeta {
    /// The version of the program that wrote it; None for state pinned
    /// before versions were recorded.
    pub version: Option<String>,
    /// Layout versions by map name; a map not listed is at version 1.
    pub layouts: BTreeMap<String, u32>,
}

impl PinnedMeta {
    /// Reads the pinned `GSLB_META` under `maps_dir`; none pinned (an
    /// older agent's state) reads as empty.
    pub fn read(maps_dir: &Path) -> Result<PinnedMeta> {
        let path = maps_dir.join(names::GSLB_META);
        if !path.exists() {
            return Ok(PinnedMeta::default());
        }
        let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
        let map: HashMap<MapData, MetaKey, MetaValue> = HashMap::try_from(Map::HashMap(data))?;
        let mut meta = PinnedMeta::default();
        for entry in map.iter() {
            let (key, value) = entry.context("reading GSLB_META")?;
            let (key, value) = (text(&key.name), text(&value.text));
            if key == PROGRAM_KEY {
                meta.version = Some(value);
            } else if let Some(name) = key.strip_prefix("layout:") {
                let version = value.parse().with_context(|| format!("GSLB_META: layout of {name} is {value:?}"))?;
                meta.layouts.insert(name.to_string(), version);
            }
        }
        Ok(meta)
    }

    /// The layout version recorded for `map`.
    fn layout(&self, map: &str) -> u32 {
        self.layouts.get(map).copied().unwrap_or(1)
    }
}

/// Records this build's version and layouts in `GSLB_META`.
pub fn write_meta(map: &mut HashMap<MapData, MetaKey, MetaValue>) -> Result<()> {
    let mut entries = vec![(PROGRAM_KEY.to_string(), this_version())];
    entries.extend(LAYOUTS.iter().map(|(name, version)| (format!("layout:{name}"), version.to_string())));
    for (key, value) in entries {
        let (k, v) = meta_entry(&key, &value);
        map.insert(k, v, 0).with_context(|| format!("writing {key} to GSLB_META"))?;
    }
    Ok(())
}

/// One `GSLB_META` entry: `key` (`program`, `layout:<MAP>`) and its text.
pub fn meta_entry(key: &str, value: &str) -> (MetaKey, MetaValue) {
    (MetaKey { name: padded(key) }, MetaValue { text: padded(value) })
}

/// The program version `GSLB_META` records.
pub fn recorded_version(map: &HashMap<MapData, MetaKey, MetaValue>) -> Option<String> {
    map.get(&MetaKey { name: padded(PROGRAM_KEY) }, 0).ok().map(|value| text(&value.text))
}

fn padded<const N: usize>(text: &str) -> [u8; N] {
    let mut bytes = [0; N];
    let len = text.len().min(N);
    bytes[..len].copy_from_slice(&text.as_bytes()[..len]);
    bytes
}

fn text(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// A map's shape as the kernel sees it: type, key size, value size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
}

/// The shapes of this build's maps, from its object.
pub fn our_shapes() -> Result<BTreeMap<String, Shape>> {
    let object = aya_obj::Object::parse(OBJECT).context("parsing the eBPF object")?;
    Ok(object
        .maps
        .iter()
        .map(|(name, map)| {
            let shape = Shape { map_type: map.map_type(), key_size: map.key_size(), value_size: map.value_size() };
            (name.clone(), shape)
        })
        .collect())
}

/// The shape of the map pinned at `path`, if one is.
pub fn pinned_shape(path: &Path) -> Result<Option<Shape>> {
    if !path.exists() {
        return Ok(None);
    }
    let info = MapData::from_pin(path)
        .and_then(|map| map.info())
        .with_context(|| format!("reading the pinned map {}", path.display()))?;
    let map_type = info.map_type().map(|t| t as u32).unwrap_or(u32::MAX);
    Ok(Some(Shape { map_type, key_size: info.key_size(), value_size: info.value_size() }))
}

/// How this build takes over the pinned maps: the ones it migrates (the
/// rest it keeps as they are), or why it cannot, one reason per map.
#[derive(Debug, Default)]
pub struct Plan {
    pub migrate: Vec<&'static Migration>,
    pub refusals: Vec<String>,
}

/// Decides, map by map, whether this build keeps the pinned map, migrates
/// it with one of `migrations`, or cannot take it over.
pub fn plan(
    pinned: &PinnedMeta,
    pinned_shapes: &BTreeMap<String, Option<Shape>>,
    ours: &BTreeMap<String, Shape>,
    migrations: &'static [Migration],
) -> Plan {
    let mut plan = Plan::default();
    for (name, version) in LAYOUTS {
        let Some(Some(theirs)) = pinned_shapes.get(name) else {
            plan.refusals.push(format!("{name} is not pinned"));
            continue;
        };
        let recorded = pinned.layout(name);
        if recorded == version {
            if ours.get(name) != Some(theirs) {
                plan.refusals.push(format!(
                    "{name} has another shape than this gslb's at the same layout version ({theirs:?} pinned, {:?} here)",
                    ours.get(name)
                ));
            }
            continue;
        }
        match migrations.iter().find(|m| m.map == name && m.from == recorded && m.to == version) {
            Some(m) if (m.from_key_size, m.from_value_size) == (theirs.key_size, theirs.value_size) => {
                plan.migrate.push(m)
            }
            Some(m) => plan.refusals.push(format!(
                "{name} has layout version {recorded} but not its sizes (key {} and value {} bytes pinned, {} and {} expected)",
                theirs.key_size, theirs.value_size, m.from_key_size, m.from_value_size
            )),
            None => plan.refusals.push(format!(
                "{name} has layout version {recorded}, this gslb uses {version} and cannot migrate between them"
            )),
        }
    }
    plan
}

/// The plan for the maps pinned under `maps_dir`, with this build's
/// migrations.
pub fn plan_for(maps_dir: &Path, pinned: &PinnedMeta) -> Result<Plan> {
    let shapes = LAYOUTS
        .iter()
        .map(|(name, _)| Ok((name.to_string(), pinned_shape(&maps_dir.join(name))?)))
        .collect::<Result<_>>()?;
    Ok(plan(pinned, &shapes, &our_shapes()?, migrate::MIGRATIONS))
}

/// Where an upgrade pins the maps it creates for migrated ones, until the
/// new program steers with them: `<pin dir>/upgrade/`.
pub struct Staging {
    dir: PathBuf,
}

impl Staging {
    /// An empty staging directory; pins a crashed upgrade left are dropped.
    pub fn new(pin_dir: &Path) -> Result<Staging> {
        let staging = Staging { dir: pin_dir.join("upgrade") };
        staging.remove();
        std::fs::create_dir_all(&staging.dir).with_context(|| format!("creating {}", staging.dir.display()))?;
        Ok(staging)
    }

    pub fn path(&self, map: &str) -> PathBuf {
        self.dir.join(map)
    }

    /// Moves every staged map over the pin of the map it replaces (the old
    /// map goes once nothing uses it), then removes the directory.
    pub fn install(&self, maps_dir: &Path) -> Result<()> {
        for entry in std::fs::read_dir(&self.dir).with_context(|| format!("reading {}", self.dir.display()))? {
            let entry = entry?;
            let target = maps_dir.join(entry.file_name());
            std::fs::rename(entry.path(), &target)
                .with_context(|| format!("moving the new map to {}", target.display()))?;
        }
        std::fs::remove_dir(&self.dir).with_context(|| format!("removing {}", self.dir.display()))
    }

    /// Drops the staged maps (an upgrade that did not happen).
    pub fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What an operator does when the upgrade is refused.
pub fn refusal_advice(pin_dir: &Path) -> String {
    format!(
        "nothing was changed: the pinned program keeps steering. To run this version, drain the edge \
         (`gslb drain --edge`, or take it out of routing), let its flows end, stop the agent, remove {} and start \
         this gslb (docs/operations.md, \"Upgrading and downgrading\"); or start the version that pinned it",
        pin_dir.display()
    )
}

/// Makes `program` the program of every pinned XDP link under `pin_dir`,
/// each replaced atomically (`BPF_LINK_UPDATE`: the interface is never
/// without a program). Returns the interfaces it replaced.
pub fn replace_links(program: &mut Xdp, pin_dir: &Path) -> Result<Vec<String>> {
    let mut replaced = Vec::new();
    for interface in attach::pinned_interfaces(pin_dir) {
        let pin = attach::link_pin(pin_dir, &interface);
        let link = PinnedLink::from_pin(&pin).with_context(|| format!("opening the pinned link {}", pin.display()))?;
        let link =
            XdpLink::try_from(FdLink::from(link)).with_context(|| format!("{} is not an XDP link", pin.display()))?;
        let id = program
            .attach_to_link(link)
            .with_context(|| format!("replacing the program of the XDP link on {interface}"))?;
        // The pin keeps the link; this process needs no descriptor of it.
        drop(program.take_link(id)?);
        info!(interface, "replaced steer on the interface");
        replaced.push(interface);
    }
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shapes() -> (BTreeMap<String, Option<Shape>>, BTreeMap<String, Shape>) {
        let ours: BTreeMap<String, Shape> = LAYOUTS
            .iter()
            .enumerate()
            .map(|(i, (name, _))| (name.to_string(), Shape { map_type: 2, key_size: 4, value_size: i as u32 + 8 }))
            .collect();
        let pinned = ours.iter().map(|(name, shape)| (name.clone(), Some(*shape))).collect();
        (pinned, ours)
    }

    #[test]
    fn the_same_layouts_are_kept_and_unrecorded_ones_are_version_1() {
        let (pinned, ours) = shapes();
        let plan = plan(&PinnedMeta::default(), &pinned, &ours, &[]);
        assert!(plan.refusals.is_empty() && plan.migrate.is_empty(), "{plan:?}");
    }

    #[test]
    fn another_layout_version_or_shape_or_a_missing_map_is_refused_by_name() {
        let (mut pinned, ours) = shapes();
        let mut meta = PinnedMeta::default();
        meta.layouts.insert(names::FLOWS.into(), 7);
        pinned.get_mut(names::BACKENDS).unwrap().as_mut().unwrap().value_size += 4;
        pinned.insert(names::VIPS.into(), None);
        let reasons = plan(&meta, &pinned, &ours, &[]).refusals;
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        assert!(reasons.iter().any(|r| r.starts_with("FLOWS has layout version 7, this gslb uses 1")), "{reasons:?}");
        assert!(reasons.iter().any(|r| r.starts_with("BACKENDS has another shape")), "{reasons:?}");
        assert!(reasons.iter().any(|r| r == "VIPS is not pinned"), "{reasons:?}");
    }

    fn widen(key: &[u8], value: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
        Some((key.to_vec(), [value, &[0; 4]].concat()))
    }

    static WIDEN_FLOWS: [Migration; 1] =
        [Migration { map: names::FLOWS, from: 0, to: 1, from_key_size: 4, from_value_size: 4, convert: widen }];

    #[test]
    fn a_known_migration_is_planned_only_from_its_version_and_sizes() {
        let (mut pinned, ours) = shapes();
        let flows = pinned.get_mut(names::FLOWS).unwrap().as_mut().unwrap();
        flows.value_size = 4;
        let mut meta = PinnedMeta::default();
        meta.layouts.insert(names::FLOWS.into(), 0);
        let planned = plan(&meta, &pinned, &ours, &WIDEN_FLOWS);
        assert!(planned.refusals.is_empty(), "{planned:?}");
        assert_eq!(planned.migrate.iter().map(|m| m.map).collect::<Vec<_>>(), [names::FLOWS]);

        // The same version with other sizes than the migration expects.
        pinned.get_mut(names::FLOWS).unwrap().as_mut().unwrap().value_size = 12;
        let planned = plan(&meta, &pinned, &ours, &WIDEN_FLOWS);
        assert!(planned.migrate.is_empty());
        assert!(planned.refusals[0].starts_with("FLOWS has layout version 0 but not its sizes"), "{planned:?}");

        // Another version than the migration's.
        meta.layouts.insert(names::FLOWS.into(), 5);
        let planned = plan(&meta, &pinned, &ours, &WIDEN_FLOWS);
        assert!(planned.refusals[0].contains("cannot migrate"), "{planned:?}");
    }

    #[test]
    fn meta_text_round_trips_and_this_version_names_the_object() {
        let padded: [u8; 32] = padded("layout:OWNER_HISTORY");
        assert_eq!(text(&padded), "layout:OWNER_HISTORY");
        let version = this_version();
        assert!(version.starts_with(env!("CARGO_PKG_VERSION")) && version.len() > 13, "{version}");
    }

    #[test]
    fn every_layout_names_a_map_of_the_object() {
        let ours = our_shapes().unwrap();
        for (name, _) in LAYOUTS {
            assert!(ours.contains_key(name), "{name} is not in the object");
        }
        assert!(ours.contains_key(names::GSLB_META), "GSLB_META was dropped from the object");
    }
}
