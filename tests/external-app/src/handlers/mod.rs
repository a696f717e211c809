pub mod billing;
pub mod ledger;
pub mod shipping;
