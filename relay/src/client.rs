pub struct RelayClient;
