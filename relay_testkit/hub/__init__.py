"""The Hub look-alike's parts, by route family; ``relay_testkit.hub_server.HubServer`` assembles them."""
