pub mod lbipam;
