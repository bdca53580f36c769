// Only what the agent sends: a named re-export lets the bundler drop the rest of the client
// (see ../aws.ts).
export {
  EC2Client,
  DescribeVolumesCommand,
  DescribeInstancesCommand,
  AttachVolumeCommand,
  DetachVolumeCommand,
  DescribeAddressesCommand,
  AssociateAddressCommand,
  DescribeNetworkInterfacesCommand,
  AttachNetworkInterfaceCommand,
  DetachNetworkInterfaceCommand,
  ModifyInstanceAttributeCommand,
  ModifyNetworkInterfaceAttributeCommand,
  DescribeRouteTablesCommand,
  ReplaceRouteCommand,
  CreateRouteCommand,
} from '@aws-sdk/client-ec2';
