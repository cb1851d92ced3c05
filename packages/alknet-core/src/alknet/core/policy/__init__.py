"""alknet.core.policy"""
