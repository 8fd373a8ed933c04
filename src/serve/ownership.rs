//! Which core owns which partition of `votes`: an explicit map with a generation, so that a
//! later change of ownership (the fleet: partitions moving between nodes and cores) can be told
//! apart from the state it replaces.

/// Partition → owning core of this node, at one generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ownership {
    generation: u64,
    /// `owner[p]` is the core that owns partition p.
    owner: Vec<usize>,
    cores: usize,
}

impl Ownership {
    /// This node owns every partition; partition p goes to core p % cores, which spreads them
    /// evenly and keeps neighbouring partitions on different cores.
    pub fn all_local(partitions: u32, cores: usize, generation: u64) -> Self {
        assert!(partitions > 0, "the votes topic has partitions");
        assert!(cores > 0, "at least one reactor core");
        let owner = (0..partitions as usize).map(|p| p % cores).collect();
        Self {
            generation,
            owner,
            cores,
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn partitions(&self) -> u32 {
        u32::try_from(self.owner.len()).expect("partition count fits u32")
    }

    pub fn owner(&self, partition: u32) -> usize {
        self.owner[partition as usize]
    }

    /// Partitions owned by `core`, ascending.
    pub fn owned_by(&self, core: usize) -> Vec<u32> {
        assert!(core < self.cores, "core {core} of {}", self.cores);
        (0..self.partitions())
            .filter(|p| self.owner(*p) == core)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_partition_has_exactly_one_owner_core() {
        let o = Ownership::all_local(8, 3, 1);
        let mut all: Vec<u32> = (0..3).flat_map(|c| o.owned_by(c)).collect();
        all.sort();
        assert_eq!(all, (0..8).collect::<Vec<_>>());
        assert_eq!(o.owned_by(0), vec![0, 3, 6]);
        assert_eq!(o.owner(7), 1);
        assert_eq!(o.generation(), 1);
    }
}
