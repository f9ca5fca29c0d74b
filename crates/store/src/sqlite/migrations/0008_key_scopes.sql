-- Paddock schema, version 8: API keys may be narrowed to a list of permissions (a JSON array of
-- `resource:action` names); NULL means everything the key's role holds.
ALTER TABLE api_keys ADD COLUMN scopes TEXT;
