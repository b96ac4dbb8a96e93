//! The indices a run passes around, as types: a db's place among the
//! sync's dbs (`DbId`) and a table's place among the run's tables
//! (`TableId`), so neither is taken for the other or for a row or column.

/// A db's place in a run: its index in `Plan::dbs`, or for a foreign
/// target `Plan::dbs.len()` plus its index in `Plan::foreign`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DbId(usize);

impl DbId {
    pub const fn new(index: usize) -> Self {
        DbId(index)
    }

    pub const fn index(self) -> usize {
        self.0
    }
}

/// A table's place in a run: its index in the run's checked tables (the
/// `TableSpec`s `validate::check` returns, in dependency order, which is
/// not the order of `Plan::tables`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableId(usize);

impl TableId {
    pub const fn new(index: usize) -> Self {
        TableId(index)
    }

    pub const fn index(self) -> usize {
        self.0
    }

    /// The ids of a run's `n` tables, in order.
    pub fn all(n: usize) -> impl Iterator<Item = TableId> {
        (0..n).map(TableId)
    }
}
